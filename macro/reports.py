"""One way to write an evaluation's report: ``<name>.json``, ``<name>.md`` and ``<name>.png`` in one folder.

Why a shared writer: every ``macro eval ...`` command leaves the same three files, and only the plot differs. The
figure is a bare :class:`matplotlib.figure.Figure` (no pyplot state, no display), so reports can be written from
worker processes, a training loop or a web server as safely as from a terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def write_report(out: Path, name: str, report: dict, table: str, draw: Callable) -> list[Path]:
    """Write the report as JSON, ``table`` as markdown and ``draw(figure)``'s plot as PNG; return the three paths.

    ``draw`` receives an empty figure, sizes it (``figure.set_size_inches``) and fills it (``figure.subplots``)."""
    from matplotlib.figure import Figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    files[0].write_text(json.dumps(report, indent=2))
    files[1].write_text(table.rstrip("\n") + "\n")
    figure = Figure()
    draw(figure)
    figure.tight_layout()
    figure.savefig(files[2], dpi=120)
    return files
