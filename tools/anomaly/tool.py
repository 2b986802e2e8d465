"""``score_anomaly``: task-agnostic anomaly score of a 2D image against the shared CADIC memory bank.

Why any modality: the bank is learnt at run time (``macro anomaly learn --task DIR`` can add a dermoscopy or
industrial category as well as a scan), so a fixed modality list would go stale after the first learn. No task id
is asked for: every patch is matched against the one shared bank, and the tool reports which learnt task the
image resembles (the task owning most of the nearest bank vectors), so an image unlike every learnt task shows up
as such instead of being forced into one.

Output: the image score (PatchCore's max patch distance), the decision at the bank's calibrated threshold
(the 95 % quantile of held-out normal scores, reported with the number), the nearest normal reference (the
training image that owns most nearest bank vectors, with its task) and a heatmap artifact: the input, the
anomaly map over it, and the reference thumbnail side by side. PNG/JPEG pixels are read on the 0..255 scale;
other 2D inputs (DICOM) are windowed to their 0.5-99.5 % range, since a bank learns from 8-bit images.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from pydantic import BaseModel

from macro.imagenet import case_pixels
from macro.tools.anomaly.bank import SLOT, MemoryBank, load_bank
from macro.tools.anomaly.features import IMAGE_SIZE, patch_features
from macro.tools.anomaly.scoring import NearestNeighbours, anomaly_maps, score
from macro.tools.base import ANY_MODALITY, MacroTool, ToolContext, ToolExample, ToolResult, ToolSpec
from macro.weights import MANIFEST, load_once


def active_bank() -> tuple[MemoryBank, NearestNeighbours]:
    """The active bank and its index, loaded once per process and reloaded when its manifest changes."""
    folder = SLOT.active()

    def load():
        bank = load_bank(folder)
        return bank, NearestNeighbours(bank.coreset.vectors)

    return load_once("anomaly/bank", load, folder / MANIFEST)


def image_pixels(image: np.ndarray, from_picture: bool) -> np.ndarray:
    """A case's (C, H, W) pixels -> (1, 3, H, W) in [0, 1] (see the module docstring for the scale)."""
    if from_picture:
        return case_pixels(image)
    lo, hi = np.percentile(image, [0.5, 99.5])
    return case_pixels(np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255.0)


def score_image(pixels: np.ndarray, bank: MemoryBank, index: NearestNeighbours) -> dict:
    """Score (1, 3, H, W) pixels: image score, decision, anomaly map (224 x 224), reference and nearest task."""
    features = patch_features(pixels)
    scores = score(index, features)
    owners = bank.coreset.owner[scores.nearest[0]]
    ref, ref_votes = Counter(owners.tolist()).most_common(1)[0]
    task, task_votes = Counter(bank.ref_task[owners].tolist()).most_common(1)[0]
    value = float(scores.image[0])
    return {
        "score": value,
        "anomalous": value > bank.threshold,
        "map": anomaly_maps(scores.patches)[0],
        "reference": int(ref),
        "reference_share": ref_votes / len(owners),
        "nearest_task": bank.task_names[task],
        "task_share": task_votes / len(owners),
    }


def heatmap_panel(pixels: np.ndarray, amap: np.ndarray, threshold: float, reference: np.ndarray) -> np.ndarray:
    """(224, 672, 3) uint8: input | map over input (jet, transparent below half the threshold) | reference."""
    from matplotlib import colormaps

    base = (
        torch.nn.functional.interpolate(
            torch.as_tensor(pixels, dtype=torch.float32),
            size=(IMAGE_SIZE, IMAGE_SIZE),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    level = np.clip((amap - 0.5 * threshold) / threshold, 0, 1)
    colour = colormaps["jet"](level)[..., :3]
    alpha = 0.6 * level[..., None]
    overlay = (1 - alpha) * base + alpha * colour
    ref = (
        torch.nn.functional.interpolate(
            torch.as_tensor(reference, dtype=torch.float32)[None, None],
            size=(IMAGE_SIZE, IMAGE_SIZE),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        / 255.0
    )
    panel = np.concatenate([base, overlay, np.repeat(ref[..., None], 3, axis=2)], axis=1)
    return np.clip(panel * 255, 0, 255).astype(np.uint8)


class AnomalyArgs(BaseModel):
    """No arguments: the shared bank is task-agnostic."""


class ScoreAnomaly(MacroTool):
    name: str = "score_anomaly"
    description: str = (
        "Screen a 2D image for anomalies against the learnt normal anatomy: score, calibrated decision, heatmap."
    )
    args_schema: type[BaseModel] = AnomalyArgs
    spec = ToolSpec(
        modalities=(ANY_MODALITY,),
        dims=(2,),
        outputs={"heatmap": "heatmap"},
        version="1.0.0",
        weights=SLOT.name,
        examples=(
            ToolExample(request="Is anything anomalous in this image?", args={}),
            ToolExample(request="Screen this slice for abnormalities.", args={}),
            ToolExample(request="Does this scan look normal?", args={}),
            ToolExample(request="Show me where the image deviates from normal anatomy.", args={}),
            ToolExample(request="Give me an anomaly score for this image.", args={}),
        ),
    )

    def execute(self, ctx: ToolContext, args: AnomalyArgs) -> ToolResult:
        bank, index = active_bank()
        from_picture = ctx.case.paths[0].suffix.lower() in (".png", ".jpg", ".jpeg")
        pixels = image_pixels(ctx.case.image, from_picture)
        result = score_image(pixels, bank, index)
        reference = bank.refs[result["reference"]]
        amap = result["map"]
        peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
        scale = (ctx.case.shape[0] / IMAGE_SIZE, ctx.case.shape[1] / IMAGE_SIZE)
        peak_px = [int(peak[0] * scale[0]), int(peak[1] * scale[1])]
        verdict = "anomalous" if result["anomalous"] else "within normal limits"
        art = ctx.store.save_png(
            heatmap_panel(pixels, amap, bank.threshold, bank.thumbs[result["reference"]]),
            "heatmap",
            "anomaly",
            {
                "score": round(result["score"], 3),
                "threshold": round(bank.threshold, 3),
                "reference": reference,
                "panels": "input | anomaly map | nearest normal reference",
            },
        )
        text = (
            f"Anomaly score {result['score']:.2f} vs threshold {bank.threshold:.2f} "
            f"({int(round(100 * bank.quantile))}th percentile of held-out normals): {verdict}; "
            f"strongest at row {peak_px[0]}, column {peak_px[1]}. Closest learnt task: {result['nearest_task']} "
            f"({100 * result['task_share']:.0f} % of patches); nearest normal reference {reference}. Heatmap {art.id}."
        )
        data = {
            "score": round(result["score"], 4),
            "threshold": round(bank.threshold, 4),
            "quantile": bank.quantile,
            "anomalous": bool(result["anomalous"]),
            "peak": peak_px,
            "nearest_task": result["nearest_task"],
            "task_share": round(result["task_share"], 3),
            "reference": reference,
            "bank": {
                "tasks": bank.task_names,
                "size": len(bank.coreset),
                "capacity": bank.capacity,
                "sha256": bank.info.get("sha256", "")[:12],
            },
        }
        return ToolResult(text=text, data=data, artifacts=[art.ref()])
