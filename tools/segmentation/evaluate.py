"""Dice per region and the shifted-scanner benchmark: none vs TENT vs VISTA over a stream per domain.

Protocol (VISTA §1.6): each domain's test cases form one online stream; each volume is adapted, then predicted;
Dice (0–100) per region, averaged over the cases where that region is present in the ground truth; masks from
sigmoid ≥ 0.5 after the ET ⊂ TC ⊂ WT hierarchy fix. Every method starts the stream from the same source weights.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from macro.reports import run_seeds, seed_table
from macro.tools.segmentation.model import REGIONS, from_grid

DOMAINS = ("source", "lowfield", "pediatric")
TEST_SEED = 9000


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice in points; None when the region is absent from the ground truth (the case does not count)."""
    if not truth.any():
        return None
    return 200.0 * float(np.logical_and(pred, truth).sum()) / float(pred.sum() + truth.sum())


def to_regions(probs, window) -> np.ndarray:
    """(1, 3, *grid) probabilities → bool (3, *case shape), nested ET ⊂ TC ⊂ WT."""
    from macro.tools.segmentation.tta import hierarchy_fix

    return from_grid((hierarchy_fix(probs)[0] >= 0.5).numpy(), window)


def mean_dice(per_case: Sequence[dict]) -> dict:
    out = {}
    for region in REGIONS:
        values = [c[region] for c in per_case if c[region] is not None]
        out[region] = round(float(np.mean(values)), 2) if values else None
    present = [out[r] for r in REGIONS if out[r] is not None]
    out["mean"] = round(float(np.mean(present)), 2) if present else None
    return out


def case_dice(pred: np.ndarray, truth: np.ndarray) -> dict:
    return {r: dice(pred[i], truth[i]) for i, r in enumerate(REGIONS)}


def stream_dice(adapter, samples) -> dict:
    """Adapt-then-predict each sample in order; Dice per case, mean Dice and seconds per volume."""
    import torch

    from macro.tools.segmentation.data import region_truth

    per_case, seconds = [], []
    for s in samples:
        start = time.perf_counter()
        probs, _ = adapter(torch.from_numpy(s.image)[None])
        seconds.append(time.perf_counter() - start)
        per_case.append(case_dice(to_regions(probs, s.window), region_truth(s)))
    return {"dice": mean_dice(per_case), "sec_per_volume": round(float(np.mean(seconds)), 3), "per_case": per_case}


def predict_dice(model, samples) -> dict:
    """Source model, no adaptation (used for the held-out source figure in the weights manifest)."""
    from macro.tools.segmentation.tta import Adapter, TTAConfig

    return stream_dice(Adapter(model, TTAConfig(method="none")), samples)["dice"]


def run_stream(method: str, samples, steps: int, source) -> dict:
    """One method over one domain's stream, from a private copy of the source model (an adapter owns its model)."""
    from macro.tools.segmentation.tta import Adapter, TTAConfig

    return stream_dice(Adapter(copy.deepcopy(source), TTAConfig(method=method, steps=steps)), samples)


def evaluate(
    data_root: Path,
    n: int,
    steps: int = 10,
    domains: Sequence[str] = DOMAINS,
    methods: Sequence[str] = ("none", "tent", "vista"),
    weights: Path | None = None,
    progress=None,
    seeds: Sequence[int] = (0,),
) -> dict:
    """``{"domains": {D: {method: {"dice": {ET, TC, WT, mean}, "sec_per_volume"}}}}`` plus per-case figures, as means
    over ``seeds`` (each a fresh test stream per domain, built from ``TEST_SEED + seed``) with 95 % intervals and
    each method's paired difference from the source model and from TENT (:func:`macro.reports.combine_seeds`)."""
    from macro.data import make
    from macro.tools.segmentation.data import load_sample
    from macro.tools.segmentation.model import SegNetConfig, load_weights

    source, _, _ = load_weights(weights)  # before any data is built, so damaged weights fail at once
    grid = SegNetConfig().grid

    def one(seed: int) -> dict:
        run: dict = {"domains": {}}
        for domain in domains:
            folder = data_root / f"test-{domain}-{TEST_SEED + seed}"
            folders = make("brats-phantom", folder, n=n, seed=TEST_SEED + seed, domain=domain)
            samples = [load_sample(f, grid) for f in folders]
            run["domains"][domain] = {}
            for method in methods:
                if progress:
                    progress(f"seed {seed}, {domain}: {method} over {len(samples)} volumes")
                run["domains"][domain][method] = run_stream(method, samples, steps, source)
        return run

    differences = {
        f"{domain}: {method} - {base}": (f"domains.{domain}.{method}.dice.mean", f"domains.{domain}.{base}.dice.mean")
        for domain in domains
        for method in methods
        for base in ("none", "tent")
        if method not in ("none", base) and base in methods
    }
    report = run_seeds(seeds, one, differences)
    report["protocol"] = {"n_per_domain": n, "steps": steps, "test_seeds": [TEST_SEED + s for s in seeds]}
    return report


def markdown(report: dict) -> str:
    lines = ["| domain | method | ET | TC | WT | mean | s/volume |", "|---|---|---|---|---|---|---|"]
    for domain, methods in report["domains"].items():
        for method, r in methods.items():
            d = r["dice"]
            cells = " | ".join("–" if d[k] is None else f"{d[k]:.2f}" for k in ("ET", "TC", "WT", "mean"))
            lines.append(f"| {domain} | {method} | {cells} | {r['sec_per_volume']:.2f} |")
    headline = [f"domains.{d}.{m}.dice.mean" for d, methods in report["domains"].items() for m in methods]
    lines += ["", seed_table(report, headline, "mean Dice, one test stream per domain and seed")]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> list[Path]:
    """JSON, markdown table and a bar plot of mean Dice per domain and method."""
    from macro.reports import write_report as write

    return write(out, "segmentation", report, markdown(report), lambda figure: _plot(figure, report))


def _plot(fig, report: dict) -> None:
    domains = list(report["domains"])
    methods = list(next(iter(report["domains"].values())))
    fig.set_size_inches(6, 3.5)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [report["domains"][d][method]["dice"]["mean"] or 0 for d in domains]
        ax.bar(np.arange(len(domains)) + i * width, values, width, label=method)
    ax.set_xticks(np.arange(len(domains)) + width * (len(methods) - 1) / 2, domains)
    ax.set_ylabel("mean Dice (ET/TC/WT)")
    ax.legend()
