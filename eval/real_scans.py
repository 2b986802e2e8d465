"""``macro eval real-scans``: every scan in the pydicom, nibabel and nilearn wheels through every tool that accepts it.

These are files no one here made (CT, MR, ultrasound, secondary captures, SEG/RTDOSE/RTSTRUCT objects, NIfTI
volumes and templates), so they show how the tools behave on real input. Each file is loaded as a user's file
would be (``load_case`` with no modality given); a refusal is its verdict. A case that loads goes through each tool
the registry offers it, called with default arguments through the agent's executor (so a failing tool is a failed
step, never a crash). The verdict per tool:

- a tool that gives a ``verdict`` (``score_anomaly``: normal, anomalous, outside the learnt categories): that;
- a tool with an out-of-distribution check (``in_distribution`` in its data: the classifiers, ``answer_stepwise``):
  ``in`` or ``outside``;
- any other tool: ``ok``; a failed call: ``error``.

The table of verdicts is pinned in ``tests/data/real_scans.json`` and checked in CI; ``--pin`` writes it anew, so
a changed verdict is a reviewed diff.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.errors import CaseError
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry

SUFFIXES = (".dcm", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg")


def wheel_roots() -> dict[str, Path]:
    import nibabel
    import nilearn
    import pydicom.data

    return {
        "pydicom": Path(pydicom.data.__file__).parent,
        "nibabel": Path(nibabel.__file__).parent,
        "nilearn": Path(nilearn.__file__).parent / "datasets" / "data",
    }


def _is_scan(path: Path) -> bool:
    """A file the case loader would take: a scan suffix, or a suffix-less DICOM (a DICOMDIR's images)."""
    name = path.name.lower()
    if name.endswith(SUFFIXES):
        return True
    if path.suffix or not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def wheel_scans() -> dict[str, Path]:
    """``wheel:relative/path`` -> file, for every scan-like file in the three wheels."""
    found = {}
    for wheel, root in wheel_roots().items():
        for path in sorted(root.rglob("*")):
            if path.is_file() and _is_scan(path):
                found[f"{wheel}:{path.relative_to(root).as_posix()}"] = path
    return found


def verdict(step) -> str:
    if not step.ok:
        return "error"
    if "verdict" in step.data:
        return step.data["verdict"]
    if "in_distribution" in step.data:
        return "in" if step.data["in_distribution"] else "outside"
    return "ok"


def sweep(log: Callable[[str], None] = print) -> dict:
    """{"verdicts": {file: {"load": ..., tool: verdict}}, "notes": {file: {tool: text}}, "seconds": ...}."""
    registry = Registry.default()
    scans = wheel_scans()
    verdicts, notes, start = {}, {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="macro-real-scans-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd test files it ships, on purpose
        executor = ToolExecutor(registry, ArtifactStore(Path(tmp)))
        for k, (name, path) in enumerate(scans.items(), 1):
            try:
                case = load_case(path)
            except CaseError as exc:
                verdicts[name], notes[name] = {"load": "refused"}, {"load": exc.problem}
                continue
            row, text = {"load": f"{case.modality} {case.dims}D"}, {}
            for tool in registry.for_case(case):
                _, step, _ = executor.run({"name": tool.name, "args": {}, "id": tool.name}, case, [], {})
                row[tool.name] = verdict(step)
                text[tool.name] = step.summary if step.ok else step.error
            verdicts[name], notes[name] = row, text
            if k % 25 == 0:
                log(f"{k}/{len(scans)} files")
    return {"verdicts": verdicts, "notes": notes, "seconds": round(time.perf_counter() - start, 1)}


def markdown(report: dict) -> str:
    counts = Counter((tool, v) for row in report["verdicts"].values() for tool, v in row.items() if tool != "load")
    loads = Counter(row["load"] for row in report["verdicts"].values())
    lines = [f"{len(report['verdicts'])} files in {report['seconds']} s", "", "| loaded as | files |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(loads.items())]
    lines += ["", "| tool | verdict | files |", "|---|---|---|"]
    lines += [f"| {tool} | {v} | {n} |" for (tool, v), n in sorted(counts.items())]
    return "\n".join(lines)
