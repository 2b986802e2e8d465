"""Step-CoT metrics (notes 2.8 and 4.3): per-step accuracy over valid items, its mean, diagnosis accuracy, and two
chain figures of ours: consistency (the predicted diagnosis is the one the predicted steps 1-6 imply) and the share
of images with all seven steps right."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


@torch.no_grad()
def predict(model: torch.nn.Module, features: torch.Tensor, batch: int = 512) -> list[np.ndarray]:
    """Per-step class probabilities (N, C_i) of a model in eval mode (its train/eval mode is restored after)."""
    was_training = model.training
    model.eval()
    chunks = [model(features[i : i + batch])[0] for i in range(0, len(features), batch)]
    model.train(was_training)
    return [torch.softmax(torch.cat([c[k] for c in chunks]), dim=-1).numpy() for k in range(len(chunks[0]))]


def step_accuracy(probs: Sequence[np.ndarray], labels: np.ndarray) -> list[float]:
    """Accuracy in points per step over rows whose label is valid (>= 0)."""
    out = []
    for k, p in enumerate(probs):
        valid = labels[:, k] >= 0
        out.append(float(100.0 * (p[valid].argmax(1) == labels[valid, k]).mean()) if valid.any() else float("nan"))
    return out


def consistency(
    probs: Sequence[np.ndarray], options: Sequence[Sequence[str]], implied: Callable[[dict], str], keys: Sequence[str]
) -> float:
    """Points: how often the predicted diagnosis equals ``implied`` applied to the predicted earlier answers."""
    answers = [np.asarray(opts)[p.argmax(1)] for p, opts in zip(probs, options)]
    agree = [implied(dict(zip(keys, row))) == row[-1] for row in zip(*answers)]
    return float(100.0 * np.mean(agree))


def all_steps_correct(probs: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Points: images whose every valid step is answered correctly."""
    right = np.ones(len(labels), dtype=bool)
    for k, p in enumerate(probs):
        right &= (labels[:, k] < 0) | (p.argmax(1) == labels[:, k])
    return float(100.0 * right.mean())


def summary(probs: Sequence[np.ndarray], labels: np.ndarray, options, implied, keys) -> dict:
    acc = step_accuracy(probs, labels)
    return {
        "step_acc": [round(a, 2) for a in acc],
        "mean_step_acc": round(float(np.nanmean(acc)), 2),
        "diagnosis_acc": round(acc[-1], 2),
        "consistency": round(consistency(probs, options, implied, keys), 2),
        "all_steps_correct": round(all_steps_correct(probs, labels), 2),
    }
