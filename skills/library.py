"""The skill library on disk: one checksummed JSON file per evolution round and a pointer to the current one.

A new round is written in full to its own file, then the ``CURRENT`` pointer is replaced atomically, under an
exclusive file lock, so a process killed mid-write leaves the previous round current and loadable, and two
processes evolving at once cannot interleave (the second builds on the first's round). Loading checks the
checksum; a damaged current round falls back to the newest intact one and says so.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from macro.artifacts import atomic_write_bytes, locked
from macro.config import Home
from macro.errors import CaseError
from macro.skills.composite import Composite, DefinitionError, make_tool
from macro.tools.registry import Registry

POINTER = "CURRENT"
ROUND = re.compile(r"round-\d{4,}\.json")


@dataclass
class Round:
    number: int
    composites: list[Composite] = field(default_factory=list)
    created: float = 0.0
    note: str = ""
    path: Path | None = None

    def get(self, name: str) -> Composite:
        for comp in self.composites:
            if comp.name == name:
                return comp
        raise KeyError(
            f"no composite {name!r} in library round {self.number}; known: "
            f"{', '.join(c.name for c in self.composites) or 'none'}"
        )


def checksum(composites: list[dict]) -> str:
    return hashlib.sha256(json.dumps(composites, sort_keys=True).encode()).hexdigest()


class Library:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.problems: list[str] = []

    def read(self, path: Path) -> Round:
        """One round file, checked; a damaged file raises a CaseError naming it."""
        try:
            body = json.loads(path.read_text())
            raw = body["composites"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CaseError(path, f"not a readable skill library round ({type(exc).__name__}: {exc})") from None
        if checksum(raw) != body.get("sha256"):
            raise CaseError(path, "checksum mismatch: the skill library round was modified or partly written")
        try:  # a checksum proves integrity, not sense: any malformed definition is this round's problem, not a crash
            if not isinstance(body["round"], int) or not isinstance(raw, list):
                raise DefinitionError("'round' must be an integer and 'composites' a list")
            composites = [Composite.from_dict(c) for c in raw]
        except Exception as exc:
            raise CaseError(path, f"malformed skill library round ({type(exc).__name__}: {exc})") from None
        return Round(body["round"], composites, body.get("created", 0.0), body.get("note", ""), path)

    def rounds(self) -> list[Path]:
        """Round files by number; other names in the folder (``round-abc.json``) are not rounds."""
        return sorted(p for p in self.root.glob("round-*.json") if ROUND.fullmatch(p.name))

    def current(self) -> Round:
        """The current round, or the newest intact one if it is damaged (noted in ``problems``); round 0 if none.
        The pointer may only name a round file in this folder."""
        pointer = self.root / POINTER
        if pointer.is_file():
            name = pointer.read_text().strip()
            if ROUND.fullmatch(name):
                try:
                    return self.read(self.root / name)
                except CaseError as exc:
                    self.problems.append(str(exc))
            else:
                self.problems.append(f"{pointer}: names {name[:80]!r}, not a round file of this library; ignored")
        for path in reversed(self.rounds()):
            try:
                return self.read(path)
            except CaseError as exc:
                self.problems.append(str(exc))
        return Round(0)

    def commit(self, composites: list[Composite], note: str = "") -> Round:
        """Write the next round with exactly ``composites`` and make it current."""
        with locked(self.root):
            number = max([self._number(p) for p in self.rounds()] + [0]) + 1
            raw = [c.to_dict() for c in composites]
            body = {"round": number, "created": time.time(), "note": note, "composites": raw, "sha256": checksum(raw)}
            path = self.root / f"round-{number:04d}.json"
            atomic_write_bytes(path, json.dumps(body, indent=1).encode())
            atomic_write_bytes(self.root / POINTER, path.name.encode())
        return Round(number, list(composites), body["created"], note, path)

    @staticmethod
    def _number(path: Path) -> int:
        return int(path.stem.split("-")[1])


def load_composites(registry: Registry, home: Home | None = None) -> Registry:
    """Add the current library round's composites to ``registry`` (returned for chaining); a composite that no
    longer fits the registered tools is reported in ``registry.problems`` and skipped."""
    library = Library((home or Home.current()).skills / "library")
    current = library.current()
    registry.problems += library.problems
    atomic = registry.atomic()
    for comp in current.composites:
        try:
            registry.add(make_tool(comp, atomic))
        except Exception as exc:  # a definition that no longer fits the tools is skipped and reported, never fatal
            registry.problems.append(f"composite {comp.name} (library round {current.number}): {exc}")
    return registry
