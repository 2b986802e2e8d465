"""Memory-bank update rules for a stream of tasks: CADIC's incremental coreset and the three baselines.

Every rule works on a :class:`Coreset`: patch vectors (M, d) with, per vector, the id of the normal image it came
from (so the tool can name the nearest normal reference). Task t arrives as its patch vectors F_t.

- :func:`thin`: PatchCore's per-task bank, greedy k-center down to ``ratio`` (``RATIO``, 25 %) of |F_t|. It is also
CADIC's
  optional pre-thinning step (``shared/research/tool_methods.md`` §4.3 step 2), so the four methods start from the
  same candidates.
- :func:`cadic_update` (§4.3 step 3, Variant A, coverage-optimal): greedy k-center over U = M ∪ thin(F_t), seeded
  with nothing, selects ``capacity`` points; old points can be evicted. The bank never exceeds ``capacity``.
- :func:`fifo_update`: the naive shared bank of the same capacity; the new task's coreset enters, the oldest
  vectors leave.
- :func:`joint_rebuild`: offline joint, a bank of the same capacity rebuilt by k-center from the candidates of
  every task seen (it keeps all past candidates, which a continual learner may not).
- PatchCore per task keeps every thin(F_t) (memory grows with T); the evaluation scores a test image against its
  own task's bank, the task-id oracle of §4.4.

Why 25 % and not anomalib's 10 %: the shared bank holds K = one task's coreset for all T tasks, so each task keeps
about K/T vectors, and at 10 % that share was too thin. On the full ``anomaly-stream`` (6 tasks, features cached,
seeds 0 and 1) CADIC trailed per-task PatchCore by 3.3 points with forgetting 2.2 at 10 %, and by 1.2 / 1.0 points
with forgetting 1.4 / 1.0 at 25 %, while PatchCore itself moved by 0.1. The PatchCore paper shows 1-25 % working
(``shared/research/tool_methods.md`` §4.2), and the bank stays 1/T of per-task PatchCore's memory at any ratio.

Distances for the selection are taken after a fixed sparse random projection to ``PROJECTED_DIM`` dims (stored
with a bank, so every update uses the same one); the bank keeps the full vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from macro.tools.anomaly.coreset import greedy_kcenter, projection

RATIO = 0.25
PROJECTED_DIM = 64


@dataclass(frozen=True)
class Coreset:
    """Bank vectors (M, d) float32 and the id of the image each came from (M,) int64."""

    vectors: torch.Tensor
    owner: np.ndarray

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def take(self, index: np.ndarray) -> "Coreset":
        index = np.asarray(index, dtype=np.int64)
        return Coreset(self.vectors[torch.as_tensor(index)], self.owner[index])

    @property
    def megabytes(self) -> float:
        """Memory of the vectors as a bank stores them (float16)."""
        return self.vectors.numel() * 2 / 2**20

    @staticmethod
    def concat(parts: list["Coreset"]) -> "Coreset":
        return Coreset(torch.cat([p.vectors for p in parts]), np.concatenate([p.owner for p in parts]))

    @staticmethod
    def from_features(features: torch.Tensor, image_ids: np.ndarray) -> "Coreset":
        """(N, P, d) patch features of N images -> all N * P vectors, each owned by its image."""
        n, p, d = features.shape
        return Coreset(features.reshape(n * p, d).float(), np.repeat(np.asarray(image_ids, dtype=np.int64), p))


def default_projection(dim: int, seed: int = 0) -> torch.Tensor:
    return projection(dim, PROJECTED_DIM, seed)


def thin(candidates: Coreset, proj: torch.Tensor, ratio: float = RATIO, seed: int = 0, progress=None) -> Coreset:
    """PatchCore's coreset of one task: k-center keeps ``ratio`` of the vectors (at least one)."""
    k = max(1, int(round(ratio * len(candidates))))
    return candidates.take(greedy_kcenter(candidates.vectors @ proj, k, seed=seed, progress=progress))


def cadic_update(
    bank: Coreset | None, new: Coreset, capacity: int, proj: torch.Tensor, seed: int = 0, progress=None
) -> Coreset:
    """CADIC: one fixed-size bank; k-center re-selects ``capacity`` vectors from the bank and the new candidates."""
    pool = new if bank is None else Coreset.concat([bank, new])
    return pool.take(greedy_kcenter(pool.vectors @ proj, capacity, seed=seed, progress=progress))


def fifo_update(bank: Coreset | None, new: Coreset, capacity: int) -> Coreset:
    """The newest ``capacity`` vectors: the new task's coreset (most important first) after what remains of the bank."""
    pool = new.take(np.arange(min(len(new), capacity)))
    if bank is not None and len(pool) < capacity:
        keep = capacity - len(pool)
        pool = Coreset.concat([bank.take(np.arange(max(0, len(bank) - keep), len(bank))), pool])
    return pool


def joint_rebuild(seen: list[Coreset], capacity: int, proj: torch.Tensor, seed: int = 0, progress=None) -> Coreset:
    """Offline joint: k-center over the candidates of every task seen, from scratch."""
    pool = Coreset.concat(seen)
    return pool.take(greedy_kcenter(pool.vectors @ proj, capacity, seed=seed, progress=progress))
