"""The source segmentation network and its input conventions (MONAI 3D UNet, 4 sequences in, ET/TC/WT out).

Conventions, as in VISTA's source model: input channels [T1, T1ce, T2, FLAIR], sigmoid multi-label outputs in
channel order [ET, TC, WT]. Each sequence is z-scored inside the head (the released VISTA code expects
pre-normalised volumes), and the volume is centre-cropped/padded around the head to a fixed 2 mm grid of
80x96x80 voxels (160x192x160 mm, the BraTS crop). Deviation for CPU: channels (16, 32, 64, 128) with three
stride-2 levels and one residual unit instead of (32..512) with four, and 2 mm instead of 1 mm voxels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from macro import weights

REGIONS = ("ET", "TC", "WT")
FILE = "unet.safetensors"
SLOT = weights.slot("segmentation", Path(__file__).parent / "weights", "macro train segmentation")


@dataclass(frozen=True)
class SegNetConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    grid: tuple[int, int, int] = (80, 96, 80)


def build_unet(cfg: SegNetConfig = SegNetConfig()):
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=4,
        out_channels=len(REGIONS),
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
        norm=Norm.BATCH,
        dropout=0.0,
    )


def head_mask(image: np.ndarray) -> np.ndarray:
    """Voxels inside the head: mean signal above Otsu's threshold, so a lifted noise floor (low-field) stays out."""
    mean = image.mean(axis=0)
    hist, edges = np.histogram(mean, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return mean > centres[int(np.argmax(w0 * w1 * (m0 - m1) ** 2))]


def normalise(image: np.ndarray) -> np.ndarray:
    """Per-sequence z-score inside the head; background set to 0."""
    mask = head_mask(image)
    out = np.zeros_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        vox = image[c][mask]
        out[c][mask] = (vox - vox.mean()) / max(float(vox.std()), 1e-6)
    return out


@dataclass(frozen=True)
class Window:
    """Where the fixed grid sits in the original volume: per axis (source start, target start, length)."""

    spans: tuple[tuple[int, int, int], ...]
    shape: tuple[int, ...]


def grid_window(mask: np.ndarray, grid: tuple[int, ...]) -> Window:
    """Centre the grid on the head's bounding box; crop or pad as needed."""
    coords = np.argwhere(mask)
    centre = (coords.min(axis=0) + coords.max(axis=0)) // 2 if len(coords) else np.asarray(mask.shape) // 2
    spans = []
    for size, g, c in zip(mask.shape, grid, centre):
        start = int(c) - g // 2
        src0, dst0 = max(start, 0), max(-start, 0)
        length = min(size - src0, g - dst0)
        spans.append((src0, dst0, length))
    return Window(tuple(spans), tuple(mask.shape))


def to_grid(volume: np.ndarray, window: Window, grid: tuple[int, ...]) -> np.ndarray:
    """(C, *shape) → (C, *grid), zero-padded."""
    out = np.zeros((volume.shape[0], *grid), dtype=np.float32)
    src = tuple(slice(s, s + n) for s, _, n in window.spans)
    dst = tuple(slice(d, d + n) for _, d, n in window.spans)
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out


def from_grid(volume: np.ndarray, window: Window) -> np.ndarray:
    """(C, *grid) → (C, *original shape); outside the grid is 0."""
    out = np.zeros((volume.shape[0], *window.shape), dtype=volume.dtype)
    src = tuple(slice(s, s + n) for s, _, n in window.spans)
    dst = tuple(slice(d, d + n) for _, d, n in window.spans)
    out[(slice(None), *src)] = volume[(slice(None), *dst)]
    return out


def prepare(image: np.ndarray, grid: tuple[int, ...]) -> tuple[np.ndarray, Window]:
    """Raw (4, X, Y, Z) case voxels → normalised (4, *grid) network input and the window to map back."""
    window = grid_window(head_mask(image), grid)
    return to_grid(normalise(image), window, grid), window


def save_weights(model, folder: Path, cfg: SegNetConfig, manifest: dict) -> dict:
    """fp16 safetensors + manifest (through :mod:`macro.weights`)."""
    return weights.save_tensors(folder, {FILE: model.state_dict()}, {**manifest, "config": asdict(cfg)})


def load_weights(folder: Path | None = None):
    """Source model in eval mode (fp32), its config and manifest; the active copy unless ``folder`` is given."""
    manifest, states = weights.load_tensors(folder or SLOT.active(), SLOT.regenerate, (FILE,))
    cfg = SegNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()})
    model = build_unet(cfg)
    model.load_state_dict(states[FILE])
    return model.eval(), cfg, manifest
