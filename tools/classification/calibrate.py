"""Temperature scaling: one scalar T fitted on held-out data so that softmax/sigmoid(logits / T) are calibrated.

Why: the tools report probabilities to a policy and to clinicians; federated training with pseudo-labels makes
models over-confident. A single temperature keeps the ranking (AUC) and fixes the scale. Fitted by minimising the
held-out negative log-likelihood over log T (a bounded 1-D search), as in Guo et al. 2017.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar


def nll(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool, temperature: float = 1.0) -> float:
    z = logits / temperature
    if multi_label:
        return float(F.binary_cross_entropy_with_logits(z, labels))
    keep = labels.sum(1) > 0
    return float(F.cross_entropy(z[keep], labels[keep].argmax(1)))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> float:
    """argmin_T NLL(logits / T) for T in [0.05, 20]."""
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, multi_label, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))


def probabilities(logits: torch.Tensor, multi_label: bool, temperature: float = 1.0) -> torch.Tensor:
    z = logits / temperature
    return torch.sigmoid(z) if multi_label else torch.softmax(z, dim=-1)


def ece(probs: torch.Tensor, labels: torch.Tensor, multi_label: bool, bins: int = 10) -> float:
    """Expected calibration error in points: of every (image, class) probability for multi-label, of the top-1
    confidence for single-label."""
    if multi_label:
        conf, correct = probs.flatten(), labels.flatten()
    else:
        keep = labels.sum(1) > 0
        conf, pred = probs[keep].max(1)
        correct = (pred == labels[keep].argmax(1)).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.float().mean()) * abs(float(conf[inside].mean()) - float(correct[inside].mean()))
    return 100.0 * total
