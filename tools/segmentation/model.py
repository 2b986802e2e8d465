"""The source segmentation network and its input conventions (MONAI 3D UNet, 4 sequences in, ET/TC/WT out).

Conventions, as in VISTA's source model: input channels [T1, T1ce, T2, FLAIR], sigmoid multi-label outputs in
channel order [ET, TC, WT]. Each sequence is z-scored inside the head (the released VISTA code expects
pre-normalised volumes), and the volume is centre-cropped/padded around the head to a fixed 2 mm grid of
80x96x80 voxels (160x192x160 mm, the BraTS crop). Deviation for CPU: channels (16, 32, 64, 128) with three
stride-2 levels and one residual unit instead of (32..512) with four, and 2 mm instead of 1 mm voxels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REGIONS = ("ET", "TC", "WT")
WEIGHTS_DIR = Path(__file__).parent / "weights"


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
    """fp16 safetensors + manifest (sha256 filled in here)."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "unet.safetensors"
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(path), metadata={"format": "pt"})
    manifest = {
        **manifest,
        "config": asdict(cfg),
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "dtype": "float16",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def load_weights(folder: Path = WEIGHTS_DIR):
    """Source model in eval mode (fp32) and its manifest."""
    from safetensors.torch import load_file

    from macro.agent.local_llm import ModelUnavailable

    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ModelUnavailable(f"{folder}: no segmentation weights; train them with: macro train segmentation")
    manifest = json.loads(manifest_path.read_text())
    cfg = SegNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()})
    model = build_unet(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(folder / manifest["file"])).items()}
    model.load_state_dict(state)
    return model.eval(), cfg, manifest
