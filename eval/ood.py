"""``macro eval ood``: how well each model's out-of-distribution check tells its own kind of image from others.

In-distribution: held-out phantom images of the task (an unseen seed, never trained on). Out-of-distribution:
every 2D image in the pydicom, nibabel and nilearn wheels that the case loader reads (CT, MR, ultrasound,
secondary captures, a DICOMDIR's thumbnails), noise pictures (uniform, Gaussian, smooth blobs, checkerboards),
and another task's phantoms. Every image goes through the tool's own path (case loader -> pixels -> the tool's
feature), so the figure is what a user meets. Reported per model: AUROC (distance as the score) over all OOD images
and per source, the share of in-distribution images flagged (false rejections) and of OOD images let through at
the shipped threshold.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from macro.case import load_case
from macro.data import make
from macro.errors import CaseError
from macro.eval.real_scans import wheel_scans
from macro.metrics import roc_auc

UNSEEN_SEED = 4242
NOISE = ("uniform", "gaussian", "smooth", "checkerboard")


def wheel_images() -> list[Path]:
    """The 2D images the case loader reads among the wheels' scans (:func:`macro.eval.real_scans.wheel_scans`)."""
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd test files it ships, on purpose
        for path in wheel_scans().values():
            try:
                case = load_case(path)
            except CaseError:
                continue
            if case.dims == 2 and min(case.shape[:2]) >= 8:
                found.append(path)
    return found


def noise_images(folder: Path, per_kind: int = 5) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, kind in enumerate(NOISE):
        for i in range(per_kind):
            rng = np.random.default_rng([k, i])
            if kind == "uniform":
                pixels = rng.integers(0, 256, (128, 128, 3))
            elif kind == "gaussian":
                pixels = np.clip(rng.normal(128, 40, (128, 128, 3)), 0, 255)
            elif kind == "smooth":  # low-frequency blobs: noise with image-like statistics
                coarse = rng.integers(0, 256, (8, 8, 3)).astype(float)
                pixels = np.kron(coarse, np.ones((16, 16, 1)))
                pixels = ndimage.gaussian_filter(pixels, sigma=(6, 6, 0))
            else:
                cell = int(rng.integers(4, 32))
                board = (np.indices((128, 128)) // cell).sum(axis=0) % 2
                pixels = np.repeat(board[..., None] * 255, 3, axis=2)
            path = folder / f"{kind}-{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def _quietly(distance: Callable, path: Path) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return distance(load_case(path))


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    scores = np.concatenate([inside, outside])
    return round(100 * roc_auc(scores, np.r_[np.zeros(len(inside)), np.ones(len(outside))]), 2)


def _evaluate(
    name: str, distance: Callable[[Path], float], threshold: float, inside: list[Path], sources: dict
) -> dict:
    d_in = np.array([distance(p) for p in inside])
    d_out = {source: np.array([distance(p) for p in paths]) for source, paths in sources.items()}
    everything = np.concatenate(list(d_out.values()))
    return {
        "model": name,
        "auroc": _auroc(d_in, everything),
        "auroc_by_source": {source: _auroc(d_in, d) for source, d in d_out.items()},
        "n_in": len(d_in),
        "n_out": {source: len(d) for source, d in d_out.items()},
        "threshold": round(threshold, 2),
        "in_flagged": round(100 * float((d_in > threshold).mean()), 2),
        "out_let_through": round(100 * float((everything <= threshold).mean()), 2),
    }


def _models() -> dict[str, tuple[str, Callable, Callable[[], float]]]:
    """model -> (its in-distribution phantom, case -> distance, threshold)."""
    from macro.tools.classification.tool import image_distance, ood_threshold
    from macro.tools.vqa import tool as vqa

    return {
        "classification/derm": (
            "derm-phantom",
            lambda case: image_distance("derm", case),
            lambda: ood_threshold("derm"),
        ),
        "classification/cxr": ("cxr-phantom", lambda case: image_distance("cxr", case), lambda: ood_threshold("cxr")),
        "vqa": ("stepcot-phantom", vqa.image_distance, vqa.ood_threshold),
    }


OTHER_DOMAIN = {"derm-phantom": "cxr-phantom", "cxr-phantom": "derm-phantom", "stepcot-phantom": "derm-phantom"}


def evaluate(data_root: Path, n_in: int = 200, log: Callable[[str], None] = print) -> dict:
    """The report for every model that has an OOD check (see the module docstring)."""
    root = Path(data_root) / "ood-eval"
    log("collecting the wheels' 2D images")
    wheels = wheel_images()
    noise = noise_images(root / "noise")
    models = _models()
    datasets = sorted({dataset for dataset, _, _ in models.values()} | set(OTHER_DOMAIN.values()))
    phantoms = {dataset: make(dataset, root / dataset, n=n_in, seed=UNSEEN_SEED) for dataset in datasets}
    report = {"protocol": {"n_in": n_in, "seed": UNSEEN_SEED, "wheel_images": len(wheels)}, "models": {}}
    for name, (dataset, distance, threshold) in models.items():
        other = OTHER_DOMAIN[dataset]
        log(f"{name}: {n_in} unseen {dataset} images against {len(wheels)} wheel images, noise and {other}")
        report["models"][name] = _evaluate(
            name,
            lambda path, distance=distance: _quietly(distance, path),
            threshold(),
            phantoms[dataset],
            {"wheels": wheels, "noise": noise, other: phantoms[other][: n_in // 2]},
        )
    return report


def markdown(report: dict) -> str:
    lines = [
        "| model | AUROC | by source | in-distribution flagged % | OOD let through % | threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        by = ", ".join(f"{s} {a:.1f}" for s, a in r["auroc_by_source"].items())
        lines.append(
            f"| {name} | {r['auroc']:.2f} | {by} | {r['in_flagged']:.1f} | {r['out_let_through']:.1f} | "
            f"{r['threshold']:.1f} |"
        )
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> list[Path]:
    from macro.reports import write_report as write

    return write(out, "ood", report, markdown(report), lambda figure: _plot(figure, report))


def _plot(fig, report: dict) -> None:
    names = list(report["models"])
    fig.set_size_inches(6, 3)
    ax = fig.subplots()
    ax.bar(names, [report["models"][n]["auroc"] for n in names])
    ax.axhline(95, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(50, 100)
    ax.set_ylabel("AUROC (in vs out)")
