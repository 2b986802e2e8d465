"""Step-CoT's losses (``shared/research/agent_methods.md`` section 2.6): masked per-step cross-entropy, the T^2
distillation KL, and the CKA-weighted feature ("channel") alignment.

Student loss per step i: CE(z_i^S, y_i) + 0.5 * L_KD + 1.0 * L_CH, with T = 2, summed over steps; rows whose label
is -1 (invalid step) are left out of every term.

L_CH: project the teacher's step-i image feature and the student's image feature to 256 dims (P_t, P_s), take
softmaxes over the feature dimension at temperature T, and weight KL(k_t || k_s) by the linear CKA of the two
batches' Gram matrices (HSIC(t, s) / sqrt(HSIC(t, t) HSIC(s, s)), centred with H = I - 11^T / B). Gradients
flow through the weight and the KL. As in the repo, P_t never learns (it is applied without gradient), so it is
a fixed random projection; it is kept that way here, on purpose.
"""

from __future__ import annotations

import torch
from torch import nn

T = 2.0
ALPHA_KD = 0.5
ALPHA_CH = 1.0
PROJ_DIM = 256


def masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows with a valid label (>= 0); zero when there are none."""
    valid = labels >= 0
    if not valid.any():
        return logits.sum() * 0
    return nn.functional.cross_entropy(logits[valid], labels[valid])


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, t: float = T) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), averaged over the valid rows; teacher is detached."""
    if not valid.any():
        return student.sum() * 0
    log_s = torch.log_softmax(student[valid] / t, dim=-1)
    log_t = torch.log_softmax(teacher[valid].detach() / t, dim=-1)
    return t * t * nn.functional.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def hsic(k_a: torch.Tensor, k_b: torch.Tensor) -> torch.Tensor:
    """Unnormalised HSIC <H K_a H, H K_b H>_F of two (B, B) Gram matrices."""
    b = k_a.shape[0]
    h = torch.eye(b, dtype=k_a.dtype) - 1.0 / b
    return ((h @ k_a @ h) * (h @ k_b @ h)).sum()


def cka(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two (B, d) batches through their Gram matrices: 1 for identical geometry, ~0 for unrelated."""
    k_a, k_b = a @ a.T, b @ b.T
    return hsic(k_a, k_b) / torch.sqrt(hsic(k_a, k_a) * hsic(k_b, k_b)).clamp_min(1e-12)


class ChannelAlignment(nn.Module):
    """L_CH for one step: CKA(k_t, k_s) * KL(k_t || k_s) on softmaxed 256-d projections of both features."""

    def __init__(self, teacher_dim: int, student_dim: int, proj_dim: int = PROJ_DIM, t: float = T):
        super().__init__()
        self.t = t
        self.p_t = nn.Linear(teacher_dim, proj_dim)
        self.p_t.requires_grad_(False)
        self.p_s = nn.Linear(student_dim, proj_dim)

    def forward(self, f_teacher: torch.Tensor, f_student: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if int(valid.sum()) < 2:
            return f_student.sum() * 0
        with torch.no_grad():
            k_t = torch.softmax(self.p_t(f_teacher[valid].detach()) / self.t, dim=-1)
        k_s = torch.softmax(self.p_s(f_student[valid]) / self.t, dim=-1)
        weight = cka(k_t, k_s)
        kl = (k_t * (torch.log(k_t.clamp_min(1e-12)) - torch.log(k_s.clamp_min(1e-12)))).sum(-1).mean()
        return weight * kl
