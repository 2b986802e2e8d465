"""PatchCore scoring against one bank: nearest-neighbour distances (FAISS, exact L2), image score and anomaly map.

Why exact search: the bank holds a few thousand vectors, so a flat index answers a 224 x 224 image (784 patches)
in milliseconds and the scores are PatchCore's, not an approximation of them. Each patch scores its Euclidean
distance to the nearest bank vector; the image score is the largest patch score (s* in the paper). PatchCore's
optional re-weighting by the density around the nearest bank vector is not used (§4.2 lists it as optional; it
needs a second search per image). The anomaly map is the 28 x 28 patch-score grid, upsampled bilinearly to the
input size and blurred with a Gaussian of sigma 4 px, as in PatchCore.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from macro.tools.anomaly.features import GRID, IMAGE_SIZE

MAP_SIGMA = 4.0


class NearestNeighbours:
    """An exact FAISS L2 index over bank vectors (float32)."""

    def __init__(self, vectors: torch.Tensor):
        import faiss

        data = np.ascontiguousarray(torch.as_tensor(vectors, dtype=torch.float32).numpy())
        self.index = faiss.IndexFlatL2(data.shape[1])
        self.index.add(data)

    def search(self, queries: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) -> Euclidean distance to the nearest bank vector (Q,) and its bank index (Q,)."""
        sq, idx = self.index.search(np.ascontiguousarray(torch.as_tensor(queries, dtype=torch.float32).numpy()), 1)
        return np.sqrt(np.maximum(sq[:, 0], 0.0)), idx[:, 0]


@dataclass(frozen=True)
class Scores:
    """Per image: score (N,), patch scores (N, P) and the bank index nearest each patch (N, P)."""

    image: np.ndarray
    patches: np.ndarray
    nearest: np.ndarray


def score(index: NearestNeighbours, features: torch.Tensor, batch: int = 32) -> Scores:
    """Score (N, P, d) patch features of N images."""
    n, p, d = features.shape
    dists, nearest = [], []
    for start in range(0, n, batch):
        chunk = features[start:start + batch]
        dist, idx = index.search(chunk.reshape(-1, d))
        dists.append(dist.reshape(len(chunk), p))
        nearest.append(idx.reshape(len(chunk), p))
    patches = np.concatenate(dists) if dists else np.zeros((0, p), np.float32)
    return Scores(patches.max(axis=1) if n else np.zeros(0), patches, np.concatenate(nearest) if nearest else np.zeros((0, p), np.int64))


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def anomaly_maps(patch_scores: np.ndarray, size: int = IMAGE_SIZE, sigma: float = MAP_SIGMA) -> np.ndarray:
    """(N, GRID * GRID) patch scores -> (N, size, size) float32 maps, upsampled and blurred (reflect padding)."""
    grid = torch.as_tensor(patch_scores, dtype=torch.float32).reshape(-1, 1, GRID, GRID)
    up = nn.functional.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    kernel = _gaussian_kernel(sigma)
    pad = len(kernel) // 2
    up = nn.functional.conv2d(nn.functional.pad(up, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    up = nn.functional.conv2d(nn.functional.pad(up, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))
    return up[:, 0].numpy()
