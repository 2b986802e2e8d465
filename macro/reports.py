"""One way to write an evaluation's report: ``<name>.json``, ``<name>.md`` and ``<name>.png`` in one folder; and one
way to combine the same evaluation run over several seeds (:func:`combine_seeds`).

Why a shared writer: every ``macro eval ...`` command leaves the same three files, and only the plot differs. The
figure is a bare :class:`matplotlib.figure.Figure` (no pyplot state, no display), so reports can be written from
worker processes, a training loop or a web server as safely as from a terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from macro.repro import EVAL_THREADS, fixed_threads, provenance
from macro.stats import over_seeds


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


def run_seeds(
    seeds: Sequence[int],
    run: Callable[[int], dict],
    differences: dict[str, tuple[str, str]],
    threads: int = EVAL_THREADS,
    log: Callable[[str], None] | None = None,
) -> dict:
    """``run(seed)`` for each seed with torch threads fixed (:func:`macro.repro.fixed_threads`), combined by
    :func:`combine_seeds`: the one way every ``macro eval`` reports over seeds."""
    with fixed_threads(threads):
        runs = []
        for seed in seeds:
            if log is not None:
                log(f"seed {seed}")
            runs.append(run(seed))
        return combine_seeds(runs, seeds, differences)


def combine_seeds(runs: Sequence[dict], seeds: Sequence[int], differences: dict[str, tuple[str, str]]) -> dict:
    """One report from the same evaluation run once per seed: the first run's shape with every number replaced by
    its mean over the seeds that have it (lists of figures element-wise; other entries, such as per-case records,
    are the first seed's), plus
    ``over_seeds`` (each figure's mean, Student-t 95 % interval, SD and per-seed values, keyed by its dotted path),
    ``differences`` (``name: (method path, baseline path)``, the per-seed difference summarised the same way: paired
    by seed) and ``provenance``."""
    flat = [_leaves(run) for run in runs]
    paths = dict.fromkeys(path for f in flat for path in f)
    figures = {}
    for path in paths:  # a figure missing from a seed (Dice of a region absent from its stream) counts where present
        values = [f[path] for f in flat if path in f]
        figures[path] = {**over_seeds(values), "per_seed": values}
    diffs = {}
    for name, (method, baseline) in differences.items():
        values = [f[method] - f[baseline] for f in flat if method in f and baseline in f]
        if values:
            diffs[name] = {**over_seeds(values), "per_seed": values}
    mean = _replace(runs[0], "", {p: s["mean"] for p, s in figures.items()})
    return {**mean, "over_seeds": figures, "differences": diffs, "provenance": provenance(seeds)}


def seed_table(report: dict, paths: Sequence[str], what: str, digits: int = 2) -> str:
    """A caption naming the seeds and ``what`` the figures are, then markdown rows ``figure | mean | 95 % CI | per
    seed`` for the named figures and every paired difference."""
    seeds = report["provenance"]["seeds"]
    caption = (
        f"Means over {len(seeds)} seed(s) {seeds}: {what}; then the paired differences; each with its 95 % "
        "interval (Student t over seeds):"
    )
    rows = [caption, "", "| figure | mean | 95 % CI | per seed |", "|---|---|---|---|"]
    items = [(p, report["over_seeds"][p]) for p in paths] + list(report["differences"].items())
    for name, s in items:
        ci = f"[{s['ci'][0]:.{digits}f}, {s['ci'][1]:.{digits}f}]" if s["ci"] else "n/a (1 seed)"
        seeds = ", ".join(f"{v:.{digits}f}" for v in s["per_seed"])
        rows.append(f"| {name} | {s['mean']:.{digits}f} | {ci} | {seeds} |")
    return "\n".join(rows)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(value) -> bool:
    """A list of figures (per task, per stage) is averaged element-wise; a list of records is not."""
    return isinstance(value, list) and all(v is None or _numeric(v) or _series(v) for v in value)


def _leaves(tree, prefix: str = "") -> dict[str, float]:
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, dict) or _series(value):
            out.update(_leaves(value, path + "."))
        elif _numeric(value):
            out[path] = float(value)
    return out


def _replace(tree, prefix: str, means: dict[str, float]):
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = {}
    for key, value in items:
        path = f"{prefix}{key}"
        nested = isinstance(value, dict) or _series(value)
        out[key] = _replace(value, path + ".", means) if nested else means.get(path, value)
    return out if isinstance(tree, dict) else list(out.values())
