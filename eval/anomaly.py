"""``macro eval anomaly``: CADIC against per-task PatchCore, a FIFO bank and an offline joint bank on a stream of
tasks, after every task, with one harness for all four (``shared/research/tool_methods.md`` §4.3-4.4).

Protocol. Tasks arrive in order (the ``anomaly-stream`` phantom by default, or any MVTec-layout root). Per task:
patch features of ``train/good`` minus its calibration hold-out, thinned by k-center to PatchCore's coreset
(``continual.RATIO``, 25 %)
(the candidates every method receives). Capacity K = the first task's coreset size, so a shared bank is 1/T of
per-task PatchCore's total memory when tasks are the same size.

- ``cadic``: one bank of K, updated by k-center over bank + candidates (Variant A).
- ``patchcore_per_task``: one bank per task, and each test image is scored against its own task's bank (a
  task-id oracle): the upper bound, memory growing with T.
- ``fifo``: one bank of K; the newest candidates in, the oldest out.
- ``joint``: one bank of K rebuilt by k-center from the candidates of every task seen (offline; keeps them all).

After every task each shared bank scores the test sets of every task seen so far, without a task id. Reported in
points (0-100): image AUROC per task after the last task and its mean; forgetting = mean over tasks 1..T-1 of
(best AUROC over the stages after learning it - final AUROC) (the last task cannot have forgotten yet, so it is
left out rather than diluting the mean with a zero); pixel AUROC of the anomaly maps over all test pixels of a
task, averaged over tasks; bank size in MB (float16, as stored); scoring ms per image = feature extraction
(shared) + nearest-neighbour search and map, on the final banks. ``bench`` times the tool's scoring path on the
active bank (p50/p95 over repeated 224 x 224 images).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from macro.data.mvtec import AnomalyTask
from macro.metrics import p50_p95, roc_auc
from macro.reports import run_seeds, seed_table
from macro.tools.anomaly.continual import Coreset

METHODS = ("cadic", "patchcore_per_task", "fifo", "joint")
SHARED = ("cadic", "fifo", "joint")
DIFFERENCES = {  # CADIC's claims: well above a FIFO bank, close to per-task PatchCore at 1/T of its memory
    f"cadic - {base}: {label}": (f"methods.cadic.{key}", f"methods.{base}.{key}")
    for base in ("fifo", "patchcore_per_task", "joint")
    for key, label in (("mean_auroc", "mean AUROC"), ("forgetting", "forgetting"))
}


def profile(quick: bool) -> dict:
    """Sizes of a run: images per task (train/good incl. the 10 % calibration hold-out; test normals = test
    anomalies = ``n_test``) and number of tasks."""
    if quick:
        return {"n": 30, "n_test": 16, "tasks": 6}
    return {"n": 60, "n_test": 40, "tasks": 6}


def stream_folders(data_root: Path, p: dict, seed: int, source: Path | None = None) -> list[Path]:
    """Task folders in order: ``source`` (a stream or an MVTec root), else the phantom stream of this profile,
    built once under ``data_root`` and reused while its options match."""
    from macro.data import make
    from macro.data.anomaly import STREAM_JSON, stream_tasks

    if source is not None:
        source = Path(source)
        if (source / STREAM_JSON).is_file():
            return stream_tasks(source)
        folders = sorted(f for f in source.iterdir() if (f / "train" / "good").is_dir()) if source.is_dir() else []
        if not folders:
            from macro.errors import CaseError

            raise CaseError(source, "neither an anomaly stream nor a folder of MVTec-layout tasks")
        return folders
    root = data_root / f"anomaly-stream-n{p['n']}-t{p['n_test']}-s{seed}"
    manifest = root / STREAM_JSON
    if manifest.is_file() and json.loads(manifest.read_text()).get("tasks") and len(stream_tasks(root)) >= p["tasks"]:
        return stream_tasks(root)[: p["tasks"]]
    return make("anomaly-stream", root, n=p["n"], n_test=p["n_test"], seed=seed, tasks=p["tasks"])


@dataclass
class TaskData:
    name: str
    candidates: Coreset  # PatchCore's coreset of the task's bank images
    test: torch.Tensor  # (N, P, d) float16 test features
    labels: np.ndarray
    masks: np.ndarray  # (N, 224, 224) bool
    bank_images: int


def prepare(task: AnomalyTask, first_id: int, proj: torch.Tensor, seed: int, bar) -> TaskData:
    """Features of one task: its PatchCore candidates (image ids from ``first_id``) and its test set."""
    from macro.data.mvtec import load_images, load_masks
    from macro.tools.anomaly.continual import thin
    from macro.tools.anomaly.features import patch_features

    bank_paths, _ = task.calibration_split()
    train = patch_features(load_images(bank_paths).astype(np.float32) / 255.0, progress=bar.update)
    candidates = thin(Coreset.from_features(train, first_id + np.arange(len(bank_paths))), proj, seed=seed)
    test = patch_features(load_images(task.test).astype(np.float32) / 255.0, progress=bar.update)
    return TaskData(task.name, candidates, test.half(), task.labels, load_masks(task), len(bank_paths))


def _image_auroc(scores, data: TaskData) -> float:
    return 100.0 * roc_auc(scores.image, data.labels == 1)


def _pixel_auroc(scores, data: TaskData) -> float:
    from macro.tools.anomaly.scoring import anomaly_maps

    return 100.0 * roc_auc(anomaly_maps(scores.patches).ravel(), data.masks.ravel())


def evaluate(
    data_root: Path,
    quick: bool = False,
    seeds: Sequence[int] = (0,),
    progress: bool = False,
    log=print,
    p: dict | None = None,
    source: Path | None = None,
) -> dict:
    """The stream once per seed (its phantom images, projection and thinning all follow the seed; a ``source`` keeps
    its images), combined into means with 95 % intervals and CADIC's paired differences from each baseline."""
    p = p or profile(quick)
    start = time.perf_counter()
    report = run_seeds(  # one thread: the small feature net and searches run fastest so (the README's figures)
        seeds, lambda seed: _run(data_root, p, seed, progress, log, source), DIFFERENCES, threads=1, log=log
    )
    report["protocol"] = {**p, "quick": quick, "seconds": round(time.perf_counter() - start, 1)}
    return report


def _run(data_root: Path, p: dict, seed: int, progress: bool, log, source: Path | None) -> dict:
    from tqdm import tqdm

    from macro.data.mvtec import read_task
    from macro.tools.anomaly.continual import cadic_update, default_projection, fifo_update, joint_rebuild
    from macro.tools.anomaly.features import FEATURE_DIM
    from macro.tools.anomaly.scoring import NearestNeighbours, score

    indexed = [read_task(f) for f in stream_folders(data_root, p, seed, source)]
    proj = default_projection(FEATURE_DIM, seed)
    total = sum(len(t.train) + len(t.test) for t in indexed)
    bar = tqdm(total=total, desc="anomaly: features", disable=not progress, mininterval=5, file=sys.stderr)
    tasks, first_id = [], 0
    for task in indexed:
        tasks.append(prepare(task, first_id, proj, seed, bar))
        first_id += tasks[-1].bank_images
    bar.close()
    capacity = len(tasks[0].candidates)
    T = len(tasks)
    matrix = {m: np.full((T, T), np.nan) for m in METHODS}
    banks: dict = {"cadic": None, "fifo": None, "joint": None}
    indexes: dict = {"patchcore_per_task": []}  # shared methods: the index of their current bank
    latest: dict = {m: [None] * T for m in METHODS}  # each task's scores at the last stage that scored it
    for t, data in enumerate(tasks):
        banks["cadic"] = cadic_update(banks["cadic"], data.candidates, capacity, proj, seed=seed)
        banks["fifo"] = fifo_update(banks["fifo"], data.candidates, capacity)
        banks["joint"] = joint_rebuild([d.candidates for d in tasks[: t + 1]], capacity, proj, seed=seed)
        indexes["patchcore_per_task"].append(NearestNeighbours(data.candidates.vectors))
        latest["patchcore_per_task"][t] = score(indexes["patchcore_per_task"][t], data.test.float())
        matrix["patchcore_per_task"][t:, t] = _image_auroc(latest["patchcore_per_task"][t], data)
        for method in SHARED:
            indexes[method] = NearestNeighbours(banks[method].vectors)
            for s in range(t + 1):
                latest[method][s] = score(indexes[method], tasks[s].test.float())
                matrix[method][t, s] = _image_auroc(latest[method][s], tasks[s])
        log(
            f"after task {t + 1}/{T} ({data.name}): "
            + ", ".join(f"{m} {np.mean(matrix[m][t, : t + 1]):.1f}" for m in METHODS)
        )
    report = {"tasks": [d.name for d in tasks], "methods": {}}
    feature_ms = _feature_ms(tasks)
    for method in METHODS:
        final = matrix[method][-1]
        best = np.nanmax(matrix[method], axis=0)
        if method == "patchcore_per_task":
            per_task = indexes[method]
            megabytes = sum(d.candidates.megabytes for d in tasks)
        else:
            per_task = [indexes[method]] * T
            megabytes = banks[method].megabytes
        report["methods"][method] = {
            "auroc_per_task": [round(float(a), 2) for a in final],
            "mean_auroc": round(float(np.mean(final)), 2),
            "forgetting": round(float(np.mean((best - final)[:-1])) if T > 1 else 0.0, 2),
            "pixel_auroc": round(float(np.mean([_pixel_auroc(r, d) for r, d in zip(latest[method], tasks)])), 2),
            "bank_mb": round(megabytes, 3),
            "ms_per_image": round(feature_ms + _search_ms(per_task, tasks), 2),
            "stages": [[None if np.isnan(v) else round(float(v), 2) for v in row] for row in matrix[method]],
        }
    report["capacity"] = capacity
    report["candidates_per_task"] = [len(d.candidates) for d in tasks]
    return report


def _feature_ms(tasks: list[TaskData], repeats: int = 5) -> float:
    """Median ms to extract the patch features of one 224 x 224 image."""
    from macro.tools.anomaly.features import patch_features

    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    patch_features(image)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        patch_features(image)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def _search_ms(indexes, tasks: list[TaskData]) -> float:
    """Mean ms per test image for the nearest-neighbour search and the anomaly map."""
    from macro.tools.anomaly.scoring import anomaly_maps, score

    count, t0 = 0, time.perf_counter()
    for index, data in zip(indexes, tasks):
        for i in range(min(8, len(data.test))):
            anomaly_maps(score(index, data.test[i : i + 1].float()).patches)
            count += 1
    return 1000.0 * (time.perf_counter() - t0) / max(count, 1)


def bench(images: int = 50, seed: int = 0) -> dict:
    """p50/p95 ms of the tool's scoring path (features, search, map, decision) on 224 x 224 images with the
    active bank; each image is a fresh draw of the phantom stream so no cache helps."""
    from macro.data.anomaly import TASKS, anomalous_image, normal_image
    from macro.tools.anomaly.tool import active_bank, score_image

    bank, index = active_bank()
    inputs = []
    for i in range(images):
        pixels = (
            normal_image(seed + 1000, i % len(TASKS), "test-good", i)
            if i % 2
            else anomalous_image(seed + 1000, i % len(TASKS), i)[0]
        )
        inputs.append(np.repeat(pixels[None, None].astype(np.float32) / 255.0, 3, axis=1))
    score_image(inputs[0], bank, index)
    times = []
    for pixels in inputs:
        t0 = time.perf_counter()
        score_image(pixels, bank, index)
        times.append(1000.0 * (time.perf_counter() - t0))
    return {
        "images": images,
        **{f"{k}_ms": v for k, v in p50_p95(times).items()},
        "bank_size": len(bank.coreset),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def markdown(report: dict) -> str:
    lines = [
        "| method | " + " | ".join(report["tasks"]) + " | mean | forgetting | pixel AUROC | bank MB | ms/image |",
        "|---|" + "---|" * (len(report["tasks"]) + 5),
    ]
    for method, r in report["methods"].items():
        lines.append(
            f"| {method} | "
            + " | ".join(f"{a:.1f}" for a in r["auroc_per_task"])
            + f" | {r['mean_auroc']:.2f} | {r['forgetting']:.2f} | {r['pixel_auroc']:.2f} | {r['bank_mb']:.2f} | "
            f"{r['ms_per_image']:.1f} |"
        )
    paths = [f"methods.{m}.{k}" for m in report["methods"] for k in ("mean_auroc", "forgetting")]
    lines += ["", seed_table(report, paths, "mean AUROC and forgetting")]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> list[Path]:
    from macro.reports import write_report as write

    return write(out, "anomaly", report, markdown(report), lambda figure: _plot(figure, report))


def _plot(fig, report: dict) -> None:
    """Image AUROC per task after the last task, and the mean over the tasks seen after each task."""
    fig.set_size_inches(11, 3.8)
    a, b = fig.subplots(1, 2)
    tasks, methods = report["tasks"], report["methods"]
    width = 0.8 / len(methods)
    for k, (method, r) in enumerate(methods.items()):
        a.bar(np.arange(len(tasks)) + k * width, r["auroc_per_task"], width, label=method)
        seen = [np.mean([v for v in row if v is not None]) for row in r["stages"]]
        b.plot(np.arange(1, len(seen) + 1), seen, marker="o", label=method)
    a.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right")
    a.set_ylabel("image AUROC after the last task")
    a.set_ylim(0, 100)
    b.set_xlabel("tasks learnt")
    b.set_ylabel("mean image AUROC over tasks seen")
    b.legend(fontsize=8)
