"""The web UI's slice viewer: a plane of the scan with the masks and heatmaps the tools wrote blended over it.

Pure numpy on top of the tools' own rendering (:func:`macro.tools.imaging.to_rgb`), so what the viewer shows is what
``render_slice`` would show, and the viewer is tested without a browser. Overlays are the tools' NIfTI outputs on the
scan's own grid; a mask resampled to another grid (after ``crop_resample``) cannot be laid over the scan and is left
out with a note rather than stretched. PNG outputs (renders, anomaly panels) are pictures, shown beside the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from macro.artifacts import ArtifactStore
from macro.case import Case
from macro.data.brats import convention_for
from macro.tools.imaging import AXES, default_index, gli_map, to_rgb, upscaled

REFERENCE = "reference mask"
HEAT_RGB = np.array([255, 60, 0], dtype=float)  # heat goes from the grey scan towards orange-red


@dataclass(frozen=True)
class Overlay:
    """One layer the viewer can show: a label map (GLI labels 1-3) or a heatmap, on the scan's grid."""

    name: str
    kind: str  # "mask" or "heatmap"
    array: np.ndarray


def slice_count(case: Case, axis: str) -> int:
    return case.shape[AXES[axis]] if case.dims == 3 else 1


def reference_overlay(case: Case) -> Overlay | None:
    """The case's own reference mask in GLI labels, when it ships one."""
    if case.labels is None:
        return None
    return Overlay(REFERENCE, "mask", gli_map(case.labels, convention_for(case.label_path.name)))


def tool_overlays(case: Case, store: ArtifactStore, artifact_ids: list[str]) -> tuple[list[Overlay], list[str]]:
    """The NIfTI masks and heatmaps among ``artifact_ids`` that lie on ``case``'s grid, and notes on those left out.
    Names are ``<tool output name> (<run>)`` so two segmentations of one thread stay apart."""
    import nibabel as nib

    layers, notes = [], []
    for art_id in artifact_ids:
        try:
            art = store.get(art_id)
        except KeyError:
            notes.append(f"{art_id}: no longer in the artifact store")
            continue
        if art.kind not in ("mask", "heatmap") or not art.path.name.endswith(".nii.gz"):
            continue
        array = np.asarray(nib.load(art.path).dataobj)
        name = f"{Path(art.id).name.split('.')[0]} ({art.id.split('/')[0]})"
        if array.shape[: case.dims] != case.shape:
            notes.append(f"{name}: on a {'x'.join(map(str, array.shape))} grid, not the scan's; not overlaid")
            continue
        layers.append(Overlay(name, art.kind, array))
    return layers, notes


def pictures(store: ArtifactStore, artifact_ids: list[str]) -> list[tuple[str, str]]:
    """``(path, caption)`` of the PNG artifacts (renders, anomaly panels) among ``artifact_ids``."""
    out = []
    for art_id in artifact_ids:
        try:
            art = store.get(art_id)
        except KeyError:
            continue
        if art.path.suffix == ".png" and art.path.is_file():
            caption = art.meta.get("where") or art.meta.get("panels") or art.kind
            out.append((str(art.path), f"{art.kind}: {caption}"))
    return out


def view(
    case: Case,
    axis: str = "axial",
    index: int | None = None,
    channel: str | None = None,
    overlays: list[Overlay] = (),
    opacity: float = 0.45,
) -> tuple[np.ndarray, int, str]:
    """The RGB picture of one plane with ``overlays`` blended in at ``opacity``, the slice index shown and where it
    is ("axial 40/79").
    ``index`` None: the slice through the largest cross-section of the first mask, else the middle one. A 2D
    colour image is shown in colour unless a channel is chosen."""
    if case.dims == 2:
        colour = channel is None and len(case.channels) == 3
        plane = np.moveaxis(case.image, 0, -1) if colour else case.channel(channel)
        planes = [layer.array.reshape(case.shape) for layer in overlays]
        index, where = 0, "2D image"
    else:
        axis_n = AXES[axis]
        size = case.shape[axis_n]
        masks = [layer.array for layer in overlays if layer.kind == "mask"]
        index = default_index(masks[0] if masks else None, axis_n, size) if index is None else index
        index = int(np.clip(index, 0, size - 1))
        plane = np.rot90(np.take(case.channel(channel), index, axis=axis_n))
        planes = [
            np.rot90(np.take(layer.array[..., 0] if layer.array.ndim == 4 else layer.array, index, axis=axis_n))
            for layer in overlays
        ]
        where = f"{axis} {index}/{size - 1}"
    mask = None
    for layer, layer_plane in zip(overlays, planes):
        if layer.kind == "mask":
            mask = layer_plane if mask is None else np.where(layer_plane > 0, layer_plane, mask)
    rgb = to_rgb(plane, mask, opacity)
    for layer, layer_plane in zip(overlays, planes):
        if layer.kind == "heatmap":
            rgb = _heat(rgb, layer_plane, opacity)
    return upscaled(rgb)[0], index, where


def _heat(rgb: np.ndarray, heat: np.ndarray, opacity: float) -> np.ndarray:
    """Blend a heatmap scaled to its own range: the hotter a pixel, the more of HEAT_RGB it takes."""
    heat = np.nan_to_num(heat.astype(float))
    span = heat.max() - heat.min()
    weight = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    alpha = (opacity * weight)[..., None]
    return ((1 - alpha) * rgb + alpha * HEAT_RGB).astype(np.uint8)
