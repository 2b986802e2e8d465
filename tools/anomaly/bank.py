"""The persistent CADIC memory bank: one fixed-size coreset shared by every task learnt, its calibration and
references, saved so that a killed process always leaves the previous bank loadable.

What a bank holds
    - the coreset (at most ``capacity`` patch vectors, float16 on disk) and, per vector, the normal training image
      it came from; a 64 x 64 greyscale thumbnail and the file name of every such image (the "nearest normal
      reference" the tool reports);
    - the sparse random projection used by every k-center update (so updates stay consistent);
    - calibration: for each held-out normal image of every task, its ``CALIBRATION_PATCHES`` highest-scoring
      patch vectors at the time the task was learnt. After each update they are rescored against the new bank,
      and the decision threshold is the ``quantile`` of the resulting image scores. Keeping a few patches (not the
      images) is a deviation: the continual setting forbids revisiting old data, but a threshold that ignores old
      tasks would be miscalibrated for them; the top patches carry almost all of an image's max-patch score.

Files (a folder, written and verified by :mod:`macro.weights`): ``manifest.json`` (format, capacity, tasks,
threshold, held-out metrics, history of commands, the file and its ``sha256``) and ``bank-<sha256[:12]>.npz``. The
new npz is written under its new name before the manifest, and older npz files go after it, so a crash at any point
leaves a manifest that names a complete npz with the right hash. A learner holds :func:`macro.artifacts.locked`
from load to save, so concurrent learners queue instead of losing a task. The active bank is the home copy once
something has been learnt under ``MACRO_HOME``, else the default shipped in the package (:data:`SLOT`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from macro import weights
from macro.errors import WeightsError
from macro.tools.anomaly.continual import Coreset

FORMAT = "macro-anomaly-bank/1"
FILE = "bank.npz"
SLOT = weights.slot("anomaly", Path(__file__).parent / "weights", "macro anomaly learn --task DIR")
THUMB = 64
CALIBRATION_PATCHES = 32
QUANTILE = 0.95


@dataclass(frozen=True)
class MemoryBank:
    """A bank in memory. ``coreset.owner`` and ``calibration.owner`` index ``refs`` / calibration images."""

    coreset: Coreset
    capacity: int
    projection: torch.Tensor
    refs: tuple[str, ...]  # per reference image: "<task>/<path inside the task folder>"
    ref_task: np.ndarray  # (R,) task index of each reference image
    thumbs: np.ndarray  # (R, THUMB, THUMB) uint8
    calibration: Coreset  # top patches of held-out normals; owner = calibration image number
    calibration_task: np.ndarray  # (C,) task index of each calibration image
    tasks: tuple[dict, ...]
    threshold: float = float("inf")
    quantile: float = QUANTILE
    info: dict = field(default_factory=dict)  # manifest extras: history, held-out metrics, seed

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    @property
    def megabytes(self) -> float:
        return self.coreset.megabytes


def prune_references(bank: MemoryBank) -> MemoryBank:
    """Drop the references no bank vector points to any more, renumbering the owners."""
    used = np.unique(bank.coreset.owner)
    remap = np.full(len(bank.refs), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return replace(
        bank,
        coreset=Coreset(bank.coreset.vectors, remap[bank.coreset.owner]),
        refs=tuple(bank.refs[i] for i in used),
        ref_task=bank.ref_task[used],
        thumbs=bank.thumbs[used],
    )


def save_bank(bank: MemoryBank, folder: Path, manifest_extra: dict | None = None) -> dict:
    """Write ``bank`` into ``folder`` atomically (see the module docstring); returns the manifest written."""
    folder = Path(folder)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        vectors=bank.coreset.vectors.to(torch.float16).numpy(),
        owner=bank.coreset.owner.astype(np.int32),
        projection=bank.projection.numpy(),
        refs=np.array(bank.refs, dtype=np.str_),
        ref_task=bank.ref_task.astype(np.int16),
        thumbs=bank.thumbs,
        calib_vectors=bank.calibration.vectors.to(torch.float16).numpy(),
        calib_owner=bank.calibration.owner.astype(np.int32),
        calib_task=bank.calibration_task.astype(np.int16),
    )
    manifest = {
        **bank.info,
        **(manifest_extra or {}),
        "format": FORMAT,
        "dtype": "float16",
        "capacity": bank.capacity,
        "size": len(bank.coreset),
        "dim": int(bank.coreset.vectors.shape[1]),
        "megabytes": round(bank.megabytes, 3),
        "tasks": list(bank.tasks),
        "threshold": {
            "value": round(float(bank.threshold), 4),
            "quantile": bank.quantile,
            "held_out_normals": len(bank.calibration_task),
        },
    }
    return weights.write(folder, {FILE: buf.getvalue()}, manifest)


def load_bank(folder: Path | None = None) -> MemoryBank:
    """The bank in ``folder`` (default: the active one); ``ModelUnavailable`` when there is none, ``WeightsError``
    when it is damaged."""
    folder = Path(folder) if folder is not None else SLOT.active()
    manifest, payloads = weights.read(folder, SLOT.regenerate, (FILE,))
    if manifest.get("format") != FORMAT:
        problem = f"unknown bank format {manifest.get('format')!r} (expected {FORMAT})"
        raise WeightsError(folder / weights.MANIFEST, problem, SLOT.regenerate)
    with np.load(io.BytesIO(payloads[FILE]), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    info = {
        k: v
        for k, v in manifest.items()
        if k in ("history", "held_out", "seed", "ratio", "feature", "method", "deviations", "sha256")
    }
    return MemoryBank(
        coreset=Coreset(torch.from_numpy(arrays["vectors"].astype(np.float32)), arrays["owner"].astype(np.int64)),
        capacity=int(manifest["capacity"]),
        projection=torch.from_numpy(arrays["projection"]),
        refs=tuple(str(r) for r in arrays["refs"]),
        ref_task=arrays["ref_task"].astype(np.int64),
        thumbs=arrays["thumbs"],
        calibration=Coreset(
            torch.from_numpy(arrays["calib_vectors"].astype(np.float32)), arrays["calib_owner"].astype(np.int64)
        ),
        calibration_task=arrays["calib_task"].astype(np.int64),
        tasks=tuple(manifest["tasks"]),
        threshold=float(manifest["threshold"]["value"]),
        quantile=float(manifest["threshold"]["quantile"]),
        info=info,
    )
