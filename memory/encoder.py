"""Frozen image encoder of the memory: one L2-normalised EMBED_DIM vector per case, 2D picture or 3D volume.

Encoder: the ImageNet EfficientNet-Lite0 trunk that ships with the classification tools (all 16 MBConv blocks,
:func:`macro.imagenet.trunk`), global-average-pooled to its 320 channels. Why 320 and not the
1280-d head feature: the head is a 1x1 conv (a linear map 320 -> 1280) plus BN and ReLU6, so the pooled 320-d
output already holds every linear direction of the pooled pre-activation head feature; it needs no projection
fitted on data we do not have offline, and at 320 floats (1.25 KiB) an exact flat search over 100k entries stays
within a few milliseconds and 1M entries fit in 1.3 GB for the IVF/HNSW kinds.

Input size EMBED_SIZE = 128 px for every view (one backbone, one static padding). 2D pictures go through the
classifier's preprocessing (``case_pixels``: 0..255 -> [0, 1], greyscale replicated to RGB); 2D images with
another value range are windowed like volume slices.

2.5D scheme for volumes (C, X, Y, Z), e.g. the 4 sequences of a multi-sequence MRI:
  1. per sequence, the foreground is every voxel above 5 % of the 1st-99th percentile range; the volume is
     cropped to the foreground's bounding box and windowed to its 0.5-99.5th foreground percentiles;
  2. three slices per orthogonal axis at 30 / 50 / 70 % of the box (9 views per sequence), each zero-padded to
     a square, resized to EMBED_SIZE and replicated to RGB;
  3. a sequence's vector is the mean of its 9 view features, L2-normalised; the case vector is the mean over
     sequences, L2-normalised. Every case therefore lands in the same EMBED_DIM space, so one index serves
     2D and 3D cases and the memory's ``where`` filter (modality, task family) keeps them apart.
Off-centre slices give lesions away from the volume centre a view; averaging (not concatenating) sequences keeps
the dimension fixed when a volume has 1 channel (CT, single MR) or 4 (BraTS).

Embeddings are cached per process by case id (a content hash), so the agent can ask for the same case's
embedding at every turn for free.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from macro import imagenet
from macro.case import Case
from macro.errors import CaseError
from macro.imagenet import case_pixels, resize

EMBED_SIZE = 128
EMBED_DIM = 320
ENCODER_ID = f"{imagenet.ENCODER_ID}/trunk-gap-{EMBED_DIM}/{EMBED_SIZE}px/2.5d-3x3"
SLICE_FRACTIONS = (0.3, 0.5, 0.7)
FOREGROUND_FRACTION = 0.05
BATCH = 64
CASES_PER_PASS = 16  # bounds the views held at once (16 volumes x 36 views x 128 px = 28 MB)
CACHE_SIZE = 256

_LOCK = threading.Lock()
_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()


def case_embedding(case: Case) -> np.ndarray:
    """The case's (EMBED_DIM,) float32 unit vector; read-only, shared with the per-process cache."""
    return _embedded([case])[0]


def embed_cases(cases: Sequence[Case]) -> np.ndarray:
    """(len(cases), EMBED_DIM) unit vectors; views of all uncached cases go through the trunk in shared batches."""
    return np.stack(_embedded(cases)) if cases else np.empty((0, EMBED_DIM), np.float32)


def _embedded(cases: Sequence[Case]) -> list[np.ndarray]:
    with _LOCK:
        found = {c.id: _CACHE[c.id] for c in cases if c.id in _CACHE}
    todo = list({c.id: c for c in cases if c.id not in found}.values())
    for first in range(0, len(todo), CASES_PER_PASS):
        group = todo[first : first + CASES_PER_PASS]
        views = [_views(case) for case in group]
        features = _features(torch.cat([v for v, _ in views]))
        bounds = np.cumsum([0] + [len(v) for v, _ in views])
        for case, (_, channels), lo, hi in zip(group, views, bounds, bounds[1:]):
            found[case.id] = _pool(features[lo:hi], channels)
            found[case.id].flags.writeable = False
    if todo:
        with _LOCK:
            _CACHE.update((case.id, found[case.id]) for case in todo)
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return [found[c.id] for c in cases]


def _features(views: torch.Tensor) -> np.ndarray:
    trunk = imagenet.trunk()
    return torch.cat([trunk(views[i : i + BATCH]).mean(dim=(2, 3)) for i in range(0, len(views), BATCH)]).numpy()


def _pool(features: np.ndarray, channels: int) -> np.ndarray:
    per_channel = features.reshape(channels, -1, features.shape[-1]).mean(axis=1)
    return _unit(_unit(per_channel).mean(axis=0)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _views(case: Case) -> tuple[torch.Tensor, int]:
    """(V, 3, EMBED_SIZE, EMBED_SIZE) views in [0, 1] and the number of channels they are grouped by."""
    image = case.image
    if case.dims == 2:
        if image.min() >= 0 and image.max() <= 255:
            return resize(case_pixels(image), EMBED_SIZE), 1
        return _rgb(_window(image[0], np.ones(image.shape[1:], bool))), 1
    if case.dims == 3:
        views = [_rgb(_square(view)) for volume in image for view in _slices(volume)]
        return torch.cat(views), image.shape[0]
    raise CaseError(case.paths[0], f"cannot embed a {case.dims}D image", accepted="2D pictures or 3D volumes")


def _slices(volume: np.ndarray) -> list[np.ndarray]:
    """Nine windowed slices of one channel: three per axis through the foreground box (module docstring)."""
    lo, hi = np.percentile(volume, (1, 99))
    foreground = volume > lo + FOREGROUND_FRACTION * (hi - lo)
    if not foreground.any():
        foreground = np.ones(volume.shape, bool)
    box = tuple(
        slice(int(idx.min()), int(idx.max()) + 1)
        for idx in (np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3))
    )
    crop, inside = volume[box], foreground[box]
    lo, hi = np.percentile(crop[inside], (0.5, 99.5))
    picked = (np.take(crop, round(f * (crop.shape[axis] - 1)), axis=axis) for axis in range(3) for f in SLICE_FRACTIONS)
    return [_scale(view, lo, hi) for view in picked]  # only the nine views are windowed, never the whole crop


def _window(values: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values[foreground], (0.5, 99.5))
    return _scale(values, lo, hi)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _square(view: np.ndarray) -> np.ndarray:
    h, w = view.shape
    side = max(h, w)
    out = np.zeros((side, side), np.float32)
    out[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = view
    return out


def _rgb(view: np.ndarray) -> torch.Tensor:
    return resize(np.repeat(view[None, None], 3, axis=1), EMBED_SIZE)
