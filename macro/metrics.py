"""Metrics more than one layer needs (the federated classifiers, the anomaly bank, their evaluations and timings)."""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Binary ROC-AUC from ranks (Mann-Whitney U), ties sharing their average rank; NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive).astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each tie group
    ranks = avg_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def p50_p95(values, digits: int = 2) -> dict:
    """Median and 95th percentile (linear interpolation), rounded; None for both when there is nothing to rank."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), digits), "p95": round(float(p95), digits)}
