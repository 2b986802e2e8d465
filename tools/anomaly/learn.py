"""``macro anomaly learn``: add tasks (MVTec-layout folders of normal images) to the CADIC bank, one after another.

Per task: hold out the last 10 % of ``train/good`` (at least 2 images) for calibration, extract patch features of
the rest, thin them to PatchCore's coreset (the bank's ``ratio``, 25 % by default), run CADIC's update (k-center
over bank + candidates, keeping ``capacity`` vectors), then recalibrate the threshold on every task's held-out
normals. A new bank takes its capacity from ``capacity`` or, by default, from the first task's coreset size (the
notes' "same K as a single-task PatchCore bank"). When a task folder has a ``test/`` split, its image AUROC and the
decision's true/false-positive rates at the calibrated threshold are recorded in the manifest as held-out metrics.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np
import torch

from macro import weights
from macro.data.mvtec import AnomalyTask, load_images, read_task
from macro.errors import CaseError
from macro.metrics import roc_auc
from macro.tools.anomaly.bank import CALIBRATION_PATCHES, THUMB, MemoryBank, prune_references
from macro.tools.anomaly.continual import RATIO, Coreset, cadic_update, default_projection, thin
from macro.tools.anomaly.features import FEATURE_DIM, patch_features
from macro.tools.anomaly.scoring import NearestNeighbours, score

FEATURE = {
    "backbone": "efficientnet-lite0 (ImageNet)",
    "blocks": [4, 10],
    "pool": "3x3 avg, stride 1",
    "grid": 28,
    "image_size": 224,
    "dim": FEATURE_DIM,
    "projection_dim_for_kcenter": 64,
}
DEVIATIONS = [
    "CADIC's update rule is our reconstruction (tool_methods.md 4.3, Variant A), not the paper's text",
    "EfficientNet-Lite0 blocks 4 + 10 (152-d) instead of a ViT / WideResNet-50 layer2 + layer3",
    "images resized to 224 without PatchCore's resize-256 centre-crop",
    "no PatchCore re-weighting of the image score by neighbourhood density",
    "the bank keeps the 32 top patches of each held-out normal to recalibrate the threshold after updates",
    "coreset ratio 25 % instead of anomalib's 10 % (the PatchCore paper shows 1-25 % working): at 10 % the shared "
    "bank's share per task was too thin (continual.py)",
    "banks over 4096 vectors are searched through a FAISS IVF index; the image score is made exact, the other patch "
    "scores are upper bounds (scoring.py)",
]


def empty_bank(seed: int = 0) -> MemoryBank:
    """A bank with no task yet; its capacity is fixed by the first task learnt."""
    empty = Coreset(torch.zeros(0, FEATURE_DIM), np.zeros(0, dtype=np.int64))
    return MemoryBank(
        coreset=empty,
        capacity=0,
        projection=default_projection(FEATURE_DIM, seed),
        refs=(),
        ref_task=np.zeros(0, dtype=np.int64),
        thumbs=np.zeros((0, THUMB, THUMB), dtype=np.uint8),
        calibration=empty,
        calibration_task=np.zeros(0, dtype=np.int64),
        tasks=(),
        info={
            "seed": seed,
            "ratio": RATIO,
            "feature": FEATURE,
            "method": "cadic",
            "deviations": DEVIATIONS,
            "history": [],
            "held_out": {},
        },
    )


def _features(paths, progress=None) -> tuple[np.ndarray, torch.Tensor]:
    pixels = load_images(paths)
    return pixels, patch_features(pixels.astype(np.float32) / 255.0, progress=progress)


def _thumbnails(pixels: np.ndarray) -> np.ndarray:
    grey = torch.as_tensor(pixels, dtype=torch.float32).mean(1, keepdim=True)
    small = torch.nn.functional.interpolate(grey, size=(THUMB, THUMB), mode="area")[:, 0]
    return small.round().clamp(0, 255).to(torch.uint8).numpy()


def calibrate(bank: MemoryBank, neighbours: NearestNeighbours) -> MemoryBank:
    """Rescore every held-out normal's kept patches against the bank (``neighbours`` indexes its coreset); threshold =
    their ``quantile``."""
    if len(bank.calibration) == 0:
        return replace(bank, threshold=float("inf"))
    dist, _ = neighbours.search(bank.calibration.vectors)
    per_image = np.full(int(bank.calibration.owner.max()) + 1, -np.inf)
    np.maximum.at(per_image, bank.calibration.owner, dist)
    return replace(bank, threshold=float(np.quantile(per_image, bank.quantile)))


def learn_task(bank: MemoryBank, task: AnomalyTask, capacity: int | None = None, progress=None) -> MemoryBank:
    """The bank after CADIC learns ``task``; ``progress(n)`` reports images and k-center steps."""
    if task.name in bank.task_names:
        raise CaseError(
            task.folder, f"a task named {task.name!r} is already in the bank", accepted="a new task folder name"
        )
    seed = int(bank.info.get("seed", 0))
    bank_paths, held_out = task.calibration_split()
    pixels, features = _features(bank_paths, progress)
    ids = len(bank.refs) + np.arange(len(bank_paths))
    ratio = float(bank.info.get("ratio", RATIO))  # a bank keeps the ratio it was built with
    candidates = thin(Coreset.from_features(features, ids), bank.projection, ratio, seed=seed, progress=progress)
    capacity = bank.capacity or capacity or len(candidates)
    old = bank.coreset if len(bank.coreset) else None
    coreset = cadic_update(old, candidates, capacity, bank.projection, seed=seed, progress=progress)
    coreset = Coreset(coreset.vectors.half().float(), coreset.owner)  # the precision it is stored in
    index = len(bank.tasks)
    names = tuple(f"{task.name}/{p.relative_to(task.folder).as_posix()}" for p in bank_paths)
    bank = replace(
        bank,
        coreset=coreset,
        capacity=capacity,
        refs=bank.refs + names,
        ref_task=np.concatenate([bank.ref_task, np.full(len(names), index)]),
        thumbs=np.concatenate([bank.thumbs, _thumbnails(pixels)]),
    )
    _, held = _features(held_out, progress)
    neighbours = NearestNeighbours(coreset.vectors)
    scores = score(neighbours, held)
    top = np.argsort(-scores.patches, axis=1)[:, :CALIBRATION_PATCHES]
    first = int(bank.calibration.owner.max()) + 1 if len(bank.calibration) else 0
    kept = Coreset(
        torch.stack([held[i, top[i]] for i in range(len(held))]).reshape(-1, held.shape[-1]).half().float(),
        np.repeat(first + np.arange(len(held)), top.shape[1]),
    )
    task_info = {
        "name": task.name,
        "modality": task.modality,
        "preprocessing": task.preprocessing,
        "folder": weights.portable(task.folder),
        "bank_images": len(bank_paths),
        "held_out_normals": len(held_out),
        "candidates": len(candidates),
        "learned": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    bank = replace(
        bank,
        calibration=Coreset.concat([bank.calibration, kept]),
        calibration_task=np.concatenate([bank.calibration_task, np.full(len(held), index)]),
        tasks=bank.tasks + (task_info,),
    )
    return calibrate(prune_references(bank), neighbours)


def held_out_metrics(bank: MemoryBank, neighbours: NearestNeighbours, task: AnomalyTask, progress=None) -> dict | None:
    """Image AUROC (points) on the task's test split and the decision's rates at the bank's threshold."""
    labels = task.labels
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    _, features = _features(task.test, progress)
    image = score(neighbours, features).image
    flagged = image > bank.threshold
    return {
        "image_auroc": round(100 * roc_auc(image, labels == 1), 2),
        "n_test": int(len(labels)),
        "tpr_at_threshold": round(100 * float(flagged[labels == 1].mean()), 1),
        "fpr_at_threshold": round(100 * float(flagged[labels == 0].mean()), 1),
        "bank_tasks": len(bank.tasks),
    }


def learn(
    bank: MemoryBank, folders, capacity: int | None = None, command: str = "", progress=None
) -> tuple[MemoryBank, dict]:
    """Learn each folder in order; returns the bank and the manifest additions (history, held-out metrics)."""
    tasks = [read_task(f) for f in folders]
    for task in tasks:
        bank = learn_task(bank, task, capacity, progress)
    held_out = dict(bank.info.get("held_out", {}))
    neighbours = NearestNeighbours(bank.coreset.vectors)
    for task in tasks:
        metrics = held_out_metrics(bank, neighbours, task, progress)
        if metrics is not None:
            held_out[task.name] = metrics
    history = list(bank.info.get("history", [])) + [
        {
            "command": command,
            "tasks": [t.name for t in tasks],
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    ]
    info = {**bank.info, "history": history, "held_out": held_out}
    return replace(bank, info=info), info
