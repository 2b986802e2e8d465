"""Names plug-ins add to the core's closed vocabularies: scan modalities and artifact kinds.

A plug-in for a new kind of image (OCT, endoscopy) declares the modality as an entry point in the group
``macro.modalities`` (``oct = "macro_oct"``), and a new artifact kind in ``macro.artifact_kinds``. Only the entry
points' names are read, never their objects, so opening a scan imports no plug-in code and a broken plug-in cannot
stop it. The names are read once per import path: a tool worker that adopts its caller's path sees the same ones.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from importlib.metadata import entry_points

MODALITY_GROUP = "macro.modalities"
KIND_GROUP = "macro.artifact_kinds"
NAME = re.compile(r"^[a-z][a-z0-9-]{1,31}$")  # what a CLI option, a sidecar and a tool spec can all spell

log = logging.getLogger(__name__)


def declared(group: str) -> tuple[str, ...]:
    """The names installed plug-ins declare in ``group``, sorted; a malformed name is logged and left out."""
    return _declared(group, tuple(sys.path))


@functools.lru_cache(maxsize=16)
def _declared(group: str, path: tuple[str, ...]) -> tuple[str, ...]:
    names = sorted({ep.name for ep in entry_points(group=group)})
    for name in names:
        if not NAME.match(name):
            log.warning("ignoring %r in entry-point group %s: expected lower-case letters, digits and '-'", name, group)
    return tuple(name for name in names if NAME.match(name))
