"""Greedy k-center (minimax facility location) coreset selection with seeding and cached minimum distances.

Why: PatchCore subsamples a task's patch vectors with greedy k-center so that a small bank still covers every
normal pattern (``shared/research/tool_methods.md`` §4.2), and CADIC's incremental update (§4.3) re-runs the same
selection over the current bank plus the new task's vectors. One sampler serves both.

The rule: start from ``selected`` (already chosen centres) or from one seeded random point, then repeat: add the
point whose distance to its nearest chosen centre is largest, and update every point's running minimum distance
with the new centre only (one fused matrix-vector product per step, O(N d); O(k N d) in all). Ties go to the lowest
index, so a seed fixes the result. Distances are Euclidean on the vectors as given, in float32; callers pass
randomly projected vectors (:func:`projection`) so a step reads a quarter of the memory.
"""

from __future__ import annotations

import numpy as np
import torch


def greedy_kcenter(
    points: torch.Tensor, k: int, seed: int = 0, selected: np.ndarray | None = None, progress=None
) -> np.ndarray:
    """Indices of ``k`` points of ``points`` (N, d) chosen greedily, ``selected`` first; all of them when k >= N.

    ``progress(n)`` is called with the number of centres added since the last call (every 256 steps)."""
    points = torch.as_tensor(points, dtype=torch.float32)
    n = points.shape[0]
    chosen = [] if selected is None else [int(i) for i in np.asarray(selected).ravel()]
    if k >= n:
        return np.arange(n)
    if len(chosen) >= k:
        return np.asarray(chosen[:k], dtype=np.int64)
    sq_norms = (points * points).sum(1)
    min_dist = torch.full((n,), float("inf"))
    if chosen:
        for start in range(0, len(chosen), 1024):
            centres = points[chosen[start : start + 1024]]
            min_dist = torch.minimum(min_dist, _sq_dist(points, sq_norms, centres).min(1).values)
    else:
        first = int(np.random.default_rng(seed).integers(n))
        chosen.append(first)
        min_dist = _sq_dist(points, sq_norms, points[first : first + 1])[:, 0]
    steps = 0
    while len(chosen) < k:
        nxt = int(torch.argmax(min_dist))
        chosen.append(nxt)
        centre = points[nxt]
        dist = torch.addmv(sq_norms, points, centre, alpha=-2.0).add_(float(centre @ centre))
        torch.minimum(min_dist, dist, out=min_dist)
        steps += 1
        if progress and steps % 256 == 0:
            progress(256)
    if progress and steps % 256:
        progress(steps % 256)
    return np.asarray(chosen, dtype=np.int64)


def projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor:
    """A sparse random projection (Achlioptas / Li et al., density 1/sqrt(dim_in)) that preserves distances up to
    a Johnson-Lindenstrauss factor: PatchCore's speed-up for the k-center distances (the bank keeps full vectors)."""
    rng = np.random.default_rng(seed)
    density = 1.0 / np.sqrt(dim_in)
    signs = rng.choice([-1.0, 0.0, 1.0], size=(dim_in, dim_out), p=[density / 2, 1 - density, density / 2])
    return torch.as_tensor(signs / np.sqrt(density * dim_out), dtype=torch.float32)


def covering_radius(points: torch.Tensor, centres: torch.Tensor, batch: int = 4096) -> float:
    """Largest distance from any point to its nearest centre: what greedy k-center keeps small."""
    points, centres = torch.as_tensor(points, dtype=torch.float32), torch.as_tensor(centres, dtype=torch.float32)
    sq_norms = (points * points).sum(1)
    worst = 0.0
    for start in range(0, points.shape[0], batch):
        d = _sq_dist(points[start : start + batch], sq_norms[start : start + batch], centres).min(1).values
        worst = max(worst, float(d.max()))
    return worst**0.5


def _sq_dist(points: torch.Tensor, sq_norms: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, m) squared distances, clamped at 0 against rounding; the expansion keeps it one matrix product."""
    return (sq_norms[:, None] - 2.0 * points @ centres.T + (centres * centres).sum(1)[None, :]).clamp_min_(0.0)
