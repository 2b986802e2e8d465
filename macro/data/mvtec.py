"""Reader for anomaly-detection tasks in the MVTec AD folder layout: real MVTec AD / VisA categories and the
``anomaly-stream`` phantom alike, so the CADIC tool and its evaluation never look at a file layout.

Layout of one task (category) folder::

    <task>/train/good/*.png|jpg            normal training images
    <task>/test/good/*.png|jpg             normal test images (optional, like the whole test/ folder)
    <task>/test/<defect>/*.png|jpg         anomalous test images, one folder per defect type
    <task>/ground_truth/<defect>/<stem>_mask.png   pixel mask (non-zero = anomalous; ``<stem>.png`` also accepted)

Sidecar ``<stem>.json`` files (the phantom writes them) are ignored here except for ``modality``; a task without
them is modality ``other`` (MVTec's products). Images are read as RGB and resized to a square (bilinear,
antialiased); masks with nearest neighbour. Every problem names the file: a missing ``train/good``, an
unreadable image, a defect image without its mask, or a mask whose size differs from its image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from macro.errors import CaseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUT = (
    "MVTec AD layout: <task>/train/good/*.png, <task>/test/<defect>/*.png, <task>/ground_truth/<defect>/<stem>_mask.png"
)


@dataclass(frozen=True)
class AnomalyTask:
    """One task: its normal training images and its labelled test images (label 1 = anomalous)."""

    name: str
    folder: Path
    modality: str
    train: tuple[Path, ...]
    test: tuple[Path, ...]
    kinds: tuple[str, ...]  # per test image: "good" or the defect folder name
    masks: tuple[Path | None, ...]  # per test image: its mask file, None for good images
    preprocessing: dict = field(default_factory=lambda: {"window": ["picture"], "field": 1.0})

    @property
    def labels(self) -> np.ndarray:
        return np.array([kind != "good" for kind in self.kinds], dtype=np.int8)

    def calibration_split(self, fraction: float = 0.1, minimum: int = 2) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
        """(bank images, held-out normals): the last ``fraction`` of train/good by name (at least ``minimum``, at
        most half) is held out to calibrate the decision threshold; the same folder always splits the same way."""
        count = min(max(minimum, int(round(fraction * len(self.train)))), len(self.train) // 2)
        return self.train[: len(self.train) - count], self.train[len(self.train) - count :]


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_task(folder: str | Path) -> AnomalyTask:
    """Index a task folder; the images themselves are read by :func:`load_images` / :func:`load_masks`."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CaseError(folder, "task folder not found", accepted=LAYOUT)
    good = folder / "train" / "good"
    if not good.is_dir():
        raise CaseError(folder, "no train/good folder", accepted=LAYOUT)
    train = _images(good)
    if len(train) < 2:
        raise CaseError(
            good, f"needs at least 2 normal training images, found {len(train)}", accepted=", ".join(IMAGE_SUFFIXES)
        )
    test, kinds, masks = [], [], []
    test_root = folder / "test"
    if test_root.is_dir():
        for kind_dir in sorted(p for p in test_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in _images(kind_dir):
                test.append(path)
                kinds.append(kind_dir.name)
                masks.append(None if kind_dir.name == "good" else _mask_path(folder, kind_dir.name, path))
    sidecar = _sidecar(train[0])
    return AnomalyTask(
        folder.name,
        folder,
        _modality(sidecar, train[0]),
        tuple(train),
        tuple(test),
        tuple(kinds),
        tuple(masks),
        sidecar.get("preprocessing") or {"window": ["picture"], "field": 1.0},
    )


def _mask_path(folder: Path, kind: str, image: Path) -> Path:
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        candidate = folder / "ground_truth" / kind / name
        if candidate.is_file():
            return candidate
    raise CaseError(
        image, f"anomalous test image has no mask ground_truth/{kind}/{image.stem}_mask.png", accepted=LAYOUT
    )


def _sidecar(image: Path) -> dict:
    """The image's sidecar JSON (the phantom writes one: modality, and how the task's images were made), or {}."""
    path = image.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CaseError(path, f"sidecar JSON is unreadable: {exc}") from None
    if not isinstance(body, dict):
        raise CaseError(path, "sidecar JSON is not an object")
    return body


def _modality(sidecar: dict, image: Path) -> str:
    from macro.case import modalities

    modality = sidecar.get("modality", "other")
    if modality not in modalities():
        raise CaseError(
            image.with_suffix(".json"), f"sidecar names unknown modality {modality!r}", accepted=", ".join(modalities())
        )
    return modality


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, UnidentifiedImageError) as exc:
        raise CaseError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None


def load_images(paths: tuple[Path, ...] | list[Path], size: int = 224) -> np.ndarray:
    """uint8 (N, 3, size, size) RGB pixels, read as the labelled sets read theirs (greyscale replicated, 16-bit
    images scaled to the 8-bit range, JPEGs decoded at the smallest sufficient scale)."""
    from macro.data.labelled import _load_rgb

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.round(_load_rgb(Path(path), size) * 255.0)
    return out


def load_masks(task: AnomalyTask, size: int = 224) -> np.ndarray:
    """bool (N_test, size, size): each test image's mask (all False for good images), checked against its image."""
    from PIL import Image

    out = np.zeros((len(task.test), size, size), dtype=bool)
    for i, (image, mask) in enumerate(zip(task.test, task.masks)):
        if mask is None:
            continue
        pixels, expected = _open(mask), _open(image).size
        if pixels.size != expected:
            raise CaseError(mask, f"mask size {pixels.size} differs from its image's {expected} ({image.name})")
        out[i] = np.asarray(pixels.convert("L").resize((size, size), Image.NEAREST)) > 0
    return out
