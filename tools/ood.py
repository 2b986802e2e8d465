"""Is this image like the ones a model learnt from? A density check on the frozen encoder's features.

Why this check: the classifiers and the Step-CoT models read the frozen ImageNet trunk, so "unlike the training
images" is a property of that trunk's features, independent of any head (the federated heads change after
unlearning; a softmax is confident on noise). The feature is read from the same trunk pass the model makes: the
channel means of blocks 5, 10 and 15 and the channel standard deviations of blocks 5 and 10 (:data:`TAPS`). Why
not the models' own pooled feature: on the derm phantoms the last block's global mean let 80 % of uniform-noise
pictures and 83 % of the wheels' real scans through at the 99 % threshold (AUROC 91.7); with the earlier blocks'
texture statistics none got through (AUROC 100, 600 training images).

The training features are modelled by probabilistic PCA: a mean, the top ``k`` principal directions with their
variances, and one isotropic variance for the rest. An image's distance is its Mahalanobis
distance under that model (squared whitened coordinates in the principal subspace plus the residual's squared norm
over the residual variance), so an image far off the training subspace, like noise or a CT slice for a skin
classifier, is far even when its projection looks ordinary. The threshold is the ``quantile`` (99 %) of the
distances of held-out in-distribution images: about 1 % of them are flagged, by construction.

Stored with the model as ``ood.safetensors`` (mean, components, variances) and ``manifest["ood"]`` (residual
variance, threshold, quantile and the feature it reads). ``macro eval ood`` measures how well it separates; ``macro
models fit-ood`` fits it for weights made before it existed (training fits it itself).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from macro import imagenet, weights
from macro.imagenet import resize

FILE = "ood.safetensors"
TAPS = (5, 10, imagenet.DEPTH - 1)


def describe(size: int) -> str:
    """The manifest's name for the feature at ``size`` px."""
    return (
        f"channel means of trunk blocks {', '.join(map(str, TAPS))} and standard deviations of blocks "
        f"{', '.join(map(str, TAPS[:-1]))} ({imagenet.ENCODER_ID}, {size} px)"
    )


def feature(maps: list[torch.Tensor]) -> np.ndarray:
    """(n, d) OOD features from the trunk's :data:`TAPS` outputs (``Trunk.taps(images, TAPS)``)."""
    parts = [m.mean(dim=(2, 3)) for m in maps] + [m.std(dim=(2, 3)) for m in maps[:-1]]
    return torch.cat(parts, dim=1).numpy().astype(np.float64)


def image_features(
    load: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, size: int, desc: str, batch: int = 128
) -> np.ndarray:
    """OOD features of images ``load(chunk)`` ((b, 3, H, W) in [0, 1]) for ``rows``, in batches with a progress bar."""
    from tqdm import tqdm

    trunk, rows, out = imagenet.trunk(), np.asarray(rows), []
    with tqdm(total=len(rows), desc=desc, file=sys.stderr, mininterval=5) as bar, torch.inference_mode():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            out.append(feature(trunk.taps(resize(load(chunk), size), TAPS)))
            bar.update(len(chunk))
    return np.concatenate(out)


@dataclass(frozen=True)
class Density:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    variances: np.ndarray  # (k,)
    residual: float
    threshold: float
    quantile: float

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n,) distances (see the module docstring)."""
        x = np.asarray(features, np.float64) - self.mean
        z = x @ self.components.T
        rest = (x * x).sum(axis=1) - (z * z).sum(axis=1)
        return np.sqrt((z * z / self.variances).sum(axis=1) + np.maximum(rest, 0) / self.residual)

    def check(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances, in_distribution) for (n, d) features."""
        d = self.distance(features)
        return d, d <= self.threshold

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean.astype(np.float32)),
            "components": torch.from_numpy(self.components.astype(np.float32)),
            "variances": torch.from_numpy(self.variances.astype(np.float32)),
        }

    def info(self) -> dict:
        return {"residual": self.residual, "threshold": self.threshold, "quantile": self.quantile}

    @classmethod
    def load(cls, tensors: dict[str, torch.Tensor], info: dict) -> "Density":
        return cls(
            tensors["mean"].double().numpy(),
            tensors["components"].double().numpy(),
            tensors["variances"].double().numpy(),
            float(info["residual"]),
            float(info["threshold"]),
            float(info["quantile"]),
        )


def result(density: Density | None, feature: np.ndarray) -> dict:
    """What a tool reports of the check for one image's (1, d) feature: in_distribution (None when the model has
    no check), distance and threshold."""
    if density is None:
        return {"in_distribution": None, "distance": None, "threshold": None}
    distance, inside = density.check(feature)
    return {
        "in_distribution": bool(inside[0]),
        "distance": round(float(distance[0]), 2),
        "threshold": round(density.threshold, 2),
    }


def load(folder, regenerate: str) -> Density | None:
    """The check stored beside a model in ``folder``, or None for weights made before it existed."""
    manifest = weights.read_manifest(folder, regenerate)
    if FILE not in manifest["files"]:
        return None
    _, states = weights.load_tensors(folder, regenerate, (FILE,))
    return Density.load(states[FILE], manifest["ood"])


def fit_on_images(load: Callable[[np.ndarray], np.ndarray], train: np.ndarray, val: np.ndarray, size: int) -> Density:
    """The check of a model that reads the trunk at ``size`` px: fitted on images ``train``, calibrated on ``val``
    (rows that ``load`` turns into (b, 3, H, W) images in [0, 1])."""
    return fit_density(
        image_features(load, train, size, "OOD check: training images"),
        image_features(load, val, size, "OOD check: validation images"),
    )


def fit_density(train: np.ndarray, held_out: np.ndarray, k: int = 16, quantile: float = 0.99) -> Density:
    """Fit on (n, d) training features; calibrate the threshold on held-out in-distribution features."""
    x = np.asarray(train, np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(k, len(s) - 1)
    eig = s**2 / max(len(x) - 1, 1)
    residual = float(max(eig[k:].mean(), 1e-12))
    # the saved model is fp16: round it first, so the threshold is calibrated on what the tool will compute
    mean, components, variances = (np.asarray(a, np.float16).astype(np.float64) for a in (mean, vt[:k], eig[:k]))
    draft = Density(mean, components, np.maximum(variances, 1e-12), residual, float("inf"), quantile)
    threshold = float(np.quantile(draft.distance(held_out), quantile))
    return Density(draft.mean, draft.components, draft.variances, residual, threshold, quantile)
