"""``score_anomaly``: task-agnostic anomaly score of a 2D image against the shared CADIC memory bank.

Why no fixed modality list: the bank is learnt at run time (``macro anomaly learn --task DIR`` can add a dermoscopy
or industrial category as well as a scan), so the tool is offered for a case only when the bank holds a task of the
case's modality. No task id is asked for: every patch is matched against the one shared bank, and the tool reports
which learnt task the image resembles (the task owning most of the nearest bank vectors).

One preprocessing path (``macro.data.anomaly``): each learnt task records how its images were made from raw
intensities (a window, a field of view, the phantom's acquisition: noise floor, bias, blur, 8-bit). A raw scan
(DICOM, NIfTI) is prepared the way each learnt task of its modality was (window -> centred square view -> the same
acquisition, seeded by the case id, so a result is reproducible) and scored under each; the preparation whose
nearest task is the task that made it wins (else the lowest score). 8-bit pictures (PNG/JPEG) are used as they are,
padded to a square with air, never stretched. Deviation, measured on the wheels' own source scans: without the
acquisition step a noise-free scan's perfectly black air and smooth tissue are novel to a bank learnt from noisy
images, and the bank's own source slices scored 38-43 against a threshold of 37.8; with it they score 28-30.

Output: the image score (PatchCore's max patch distance), ``verdict``: ``normal`` or ``anomalous`` at the bank's
calibrated threshold (the 95 % quantile of held-out normal scores), or ``outside`` when under ``SUPPORT_FLOOR`` of
its patches lie within the threshold of the bank (an image unlike every learnt category: no decision is given, only
the evidence), the nearest normal reference, the nearest task, and a heatmap artifact (input | anomaly map over it |
reference).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from pydantic import BaseModel

from macro import weights
from macro.case import IMAGE_EXT
from macro.data.anomaly import PICTURE, acquire, apply_window, square_view
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


SUPPORT_FLOOR = 0.8  # in-category images, normal or anomalous: >= 0.95 of patches within the threshold; noise: 0
FALLBACK = {"window": ["percentile", 0.5, 99.5], "field": 1.0}  # a raw modality no task was learnt from


def learnt_modalities() -> frozenset[str]:
    """The modalities of the active bank's tasks (from its manifest, cached until it changes)."""
    folder = SLOT.active()
    manifest = load_once(
        "anomaly/modalities", lambda: weights.read_manifest(folder, SLOT.regenerate), folder / MANIFEST
    )
    return frozenset(t["modality"] for t in manifest["tasks"])


def _letterbox(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, S, S): the picture centred on an air background, its aspect kept."""
    c, h, w = image.shape
    side = max(h, w)
    out = np.zeros((c, side, side), np.float32)
    out[:, (side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = image
    return out


def preparations(case, bank: MemoryBank) -> list[tuple[dict, np.ndarray]]:
    """(preprocessing, (1, 3, H, W) pixels in [0, 1]) for each way the bank has learnt to see an image like ``case``
    (module docstring)."""
    if case.paths[0].suffix.lower() in IMAGE_EXT:
        return [(PICTURE, case_pixels(_letterbox(np.asarray(case.image, np.float32))))]
    seen = []
    for task in bank.tasks:
        prep = task.get("preprocessing", PICTURE)
        if task["modality"] == case.modality and prep["window"][0] != "picture" and prep not in seen:
            seen.append(prep)
    raw = np.asarray(case.image[0], np.float32)
    out = []
    for k, prep in enumerate(seen or [FALLBACK]):
        rng = np.random.default_rng([int(case.id.removeprefix("case-"), 16), k])
        view = acquire(rng, square_view(apply_window(raw, prep["window"]), prep["field"]))
        out.append((prep, case_pixels(view[None].astype(np.float32))))
    return out


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
        "support": float((scores.patches[0] <= bank.threshold).mean()),
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
        version="1.2.0",
        deterministic=True,
        cases=("wheel:pydicom/data/test_files/CT_small.dcm",),
        weights=SLOT.name,
        examples=(
            ToolExample(request="Is anything anomalous in this image?", args={}),
            ToolExample(request="Screen this slice for abnormalities.", args={}),
            ToolExample(request="Does this scan look normal?", args={}),
            ToolExample(request="Show me where the image deviates from normal anatomy.", args={}),
            ToolExample(request="Give me an anomaly score for this image.", args={}),
            ToolExample(request="Is this image normal?", args={}),
            ToolExample(request="anomaly score?", args={}),
            ToolExample(request="Flag anything unusual.", args={}),
            ToolExample(request="Anything out of the ordinary?", args={}),
            ToolExample(request="Run the anomaly detector.", args={}),
            ToolExample(request="How abnormal is this slice?", args={}),
            ToolExample(request="Give me an anomaly heatmap.", args={}),
            ToolExample(request="Ist auf diesem Bild etwas auffällig?", args={}),
            ToolExample(request="¿Hay algo anormal en esta imagen?", args={}),
            ToolExample(request="Cette coupe est-elle normale ?", args={}),
            ToolExample(request="Quick normality check on this slice.", args={}),
            ToolExample(request="see anything strange?", args={}),
            ToolExample(request="Is there anything abnormal here?", args={}),
            ToolExample(request="Does this look abnormal?", args={}),
            ToolExample(request="Run an anomaly check.", args={}),
            ToolExample(request="Anything unusual in this slice?", args={}),
            ToolExample(request="How normal is this image?", args={}),
            ToolExample(request="quick anomaly check", args={}),
            ToolExample(request="Check whether this image is normal.", args={}),
            ToolExample(request="Find abnormal regions.", args={}),
            ToolExample(request="Heatmap of abnormal areas, please.", args={}),
            ToolExample(request="Is this slice within normal limits?", args={}),
            ToolExample(request="Does anything look off?", args={}),
            ToolExample(request="Gibt es Auffälligkeiten?", args={}),
            ToolExample(request="Quelque chose d'inhabituel sur cette coupe ?", args={}),
            ToolExample(request="¿Se ve algo raro?", args={}),
            ToolExample(request="C'è qualcosa di anomalo?", args={}),
            ToolExample(request="does anything look strange here?", args={}),
            ToolExample(request="is something off with this image?", args={}),
            ToolExample(request="anything odd?", args={}),
            ToolExample(request="Sieht das Bild normal aus?", args={}),
            ToolExample(request="Est-ce que quelque chose cloche ?", args={}),
            ToolExample(request="¿Es normal esta imagen?", args={}),
        ),
    )

    def offered(self, case) -> bool:
        return super().offered(case) and case.modality in learnt_modalities()

    def execute(self, ctx: ToolContext, args: AnomalyArgs) -> ToolResult:
        bank, index = active_bank()
        tried = [(prep, pixels, score_image(pixels, bank, index)) for prep, pixels in preparations(ctx.case, bank)]
        own = {t["name"]: t.get("preprocessing", PICTURE) for t in bank.tasks}
        consistent = [t for t in tried if own[t[2]["nearest_task"]] == t[0]]
        prep, pixels, result = min(consistent or tried, key=lambda t: t[2]["score"])
        reference = bank.refs[result["reference"]]
        amap = result["map"]
        peak_px = _source_position(np.unravel_index(int(np.argmax(amap)), amap.shape), ctx.case.shape, prep)
        if result["support"] < SUPPORT_FLOOR:
            verdict = "outside"
        else:
            verdict = "anomalous" if result["anomalous"] else "normal"
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
        evidence = (
            f"{100 * result['support']:.0f} % of patches within the threshold of the bank; closest learnt task "
            f"{result['nearest_task']} ({100 * result['task_share']:.0f} % of patches)"
        )
        if verdict == "outside":
            text = (
                f"Outside the learnt categories ({', '.join(bank.task_names)}): no decision. "
                f"Evidence: only {evidence}; "
                f"anomaly score {result['score']:.2f} vs threshold {bank.threshold:.2f}. Heatmap {art.id}."
            )
        else:
            text = (
                f"Anomaly score {result['score']:.2f} vs threshold {bank.threshold:.2f} "
                f"({int(round(100 * bank.quantile))}th percentile of held-out normals): "
                f"{'anomalous' if verdict == 'anomalous' else 'within normal limits'}; strongest at row {peak_px[0]}, "
                f"column {peak_px[1]}. {evidence[0].upper() + evidence[1:]}; nearest normal reference {reference}. "
                f"Heatmap {art.id}."
            )
        headline = {
            "outside": f"Outside the learnt categories ({', '.join(bank.task_names)}): no anomaly decision is made.",
            "normal": f"Within normal limits: anomaly score {result['score']:.2f}, below the threshold "
            f"{bank.threshold:.2f}.",
            "anomalous": f"Anomalous: score {result['score']:.2f} above the threshold {bank.threshold:.2f}, "
            f"strongest at row {peak_px[0]}, column {peak_px[1]}.",
        }[verdict]
        data = {
            "verdict": verdict,
            "score": round(result["score"], 4),
            "threshold": round(bank.threshold, 4),
            "quantile": bank.quantile,
            "anomalous": verdict == "anomalous",
            "support": round(result["support"], 3),
            "peak": peak_px,
            "nearest_task": result["nearest_task"],
            "task_share": round(result["task_share"], 3),
            "reference": reference,
            "preprocessing": prep,
            "bank": {
                "tasks": bank.task_names,
                "size": len(bank.coreset),
                "capacity": bank.capacity,
                "sha256": bank.info.get("sha256", "")[:12],
            },
        }
        return ToolResult(text=text, headline=headline, data=data, artifacts=[art.ref()])


def _source_position(cell: tuple[int, int], shape: tuple[int, ...], prep: dict) -> list[int]:
    """Row and column in the case of a point of the SIZE x SIZE prepared view (its centred square field)."""
    h, w = shape[:2]
    side = max(h, w) * prep["field"]
    row = h / 2 + ((cell[0] + 0.5) / IMAGE_SIZE - 0.5) * side
    col = w / 2 + ((cell[1] + 0.5) / IMAGE_SIZE - 0.5) * side
    return [int(np.clip(row, 0, h - 1)), int(np.clip(col, 0, w - 1))]
