"""Test-time adaptation over a stream of volumes: ``none``, ``tent`` and ``vista``, behind one interface.

VISTA (research/tool_methods.md §1), faithful to the released code:
* only BatchNorm affine parameters (gamma, beta) are optimised (Adam, lr 1e-4, no weight decay); online and
  continual (no reset between volumes unless ``episodic``);
* an EMA teacher (decay 0.99) whose BN buffers are copied from the student after each step; the prediction for a
  volume is the teacher's after that volume's steps (10 by default);
* three views per step: clean, a low-frequency cross-sequence amplitude swap (LFCCS: centred cube of side
  ``lowfreq_ratio`` x size in the shifted 3D spectrum, one random sequence pair) and an uncertainty-guided patch
  swap (UGPS: teacher binary entropy above its per-volume 0.95 quantile, dilated by a max-pool, voxel values of a
  random sequence pair swapped inside);
* pseudo-labels from the teacher's clean view (hierarchy fixed so ET ⊂ TC ⊂ WT): positives p ≥ 0.95, negatives
  p ≤ 0.05 (weight 0.1), kept only where the variance of the teacher's probabilities across the three views is
  ≤ 0.02; BCE on the student's clean logits (BN in train mode); plus the interventional consistency loss, soft BCE
  between the student's logits on each intervention view (BN in eval mode) and the teacher's clean probabilities.

Deviations: the low-frequency cube is centred exactly on the DC bin with an odd side (2·round(r·n/2)+1, e.g.
9 bins at n = 80 where the code takes round(r·n) = 8), so it is symmetric under the spectrum's Hermitian symmetry:
the swapped view stays real without discarding energy, and swapping twice restores the input. The UGPS dilation kernel
scales with the grid (15 at 160x192x160 → 7 at our 80x96x80 2 mm grid), so
the patches cover the same anatomy. The teacher's final prediction of a volume normalises with that volume's own BN
statistics (``teacher_bn="batch"``; its running buffers are untouched). The notes do not say which mode the
teacher predicts in; with the running statistics copied from the student (``"running"``) the paediatric stream
lost 2 Dice points against this (46.77 vs 48.75 mean Dice, 10 volumes), while raising the student's BN momentum to
0.3, which puts 97 % of the running statistics on the current volume, recovered only 0.16: the student's
statistics do not fit the teacher's own activations. Mean-teacher TTA code (CoTTA) also runs its teacher with
batch statistics. TENT is the classic BN-affine entropy minimisation (train-mode BN), with the
same optimiser and step count so the comparison is like for like.
"""

from __future__ import annotations

import copy
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("none", "tent", "vista")
PAIRS = tuple(itertools.combinations(range(4), 2))
FORMAT = torch.channels_last_3d  # oneDNN's 3D convolutions run about 20 % faster on CPU in this layout


@dataclass
class TTAConfig:
    method: str = "vista"
    steps: int = 10
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.9999)
    ema: float = 0.99
    lowfreq_ratio: float = 0.10
    unc_quantile: float = 0.95
    dilation: int = 7
    pos_thr: float = 0.95
    neg_thr: float = 0.05
    var_thr: float = 0.02
    neg_weight: float = 0.1
    w_pl: float = 1.0
    w_cons: float = 1.0
    episodic: bool = False
    teacher_bn: str = "batch"
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown adaptation {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.teacher_bn not in ("batch", "running"):
            raise ValueError(f"teacher_bn must be 'batch' or 'running', got {self.teacher_bn!r}")


def bn_affine_params(model: nn.Module) -> list[nn.Parameter]:
    return [
        p
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in (m.weight, m.bias)
        if p is not None
    ]


def set_bn_mode(model: nn.Module, train: bool) -> None:
    """Everything in eval mode except BatchNorm layers, which follow ``train`` (batch statistics)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(train)


@contextmanager
def batch_statistics(model: nn.Module, enabled: bool = True):
    """Normalise with the input's own BatchNorm statistics (as in train mode) without touching running stats.

    BatchNorm uses batch statistics only in train mode; with ``track_running_stats`` off it also leaves its
    buffers alone."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []
    modes = [m.training for m in layers]
    for m in layers:
        m.train(True)
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m, mode in zip(layers, modes):
            m.track_running_stats = True
            m.train(mode)


def hierarchy_fix(p: torch.Tensor) -> torch.Tensor:
    """Channels [ET, TC, WT]: TC ← max(TC, ET), WT ← max(WT, TC)."""
    et, tc, wt = p[:, 0:1], p[:, 1:2], p[:, 2:3]
    tc = torch.maximum(tc, et)
    return torch.cat([et, tc, torch.maximum(wt, tc)], dim=1)


def lowfreq_swap(x: torch.Tensor, a: int, b: int, ratio: float) -> torch.Tensor:
    """Swap the low-frequency amplitude of sequences a and b (3D FFT), keeping each channel's phase.

    The spectrum of a real volume is Hermitian, so the real FFT (half of the last axis) holds all of it; the cube
    is symmetric about DC, so swapping its half there is the same swap as on the full spectrum, at half the cost.
    """
    out = x.clone()
    if ratio <= 0:
        return out
    dims = x.shape[2:]
    halves = [int(round(ratio * n / 2)) for n in dims]
    spec = torch.fft.fftshift(torch.fft.rfftn(x[:, [a, b]].float(), dim=(-3, -2, -1)), dim=(-3, -2))
    amp, phase = spec.abs(), torch.angle(spec)
    cube = (*(slice(n // 2 - h, n // 2 + h + 1) for n, h in zip(dims[:2], halves[:2])), slice(0, halves[2] + 1))
    swapped = amp.clone()
    swapped[(slice(None), 0, *cube)] = amp[(slice(None), 1, *cube)]
    swapped[(slice(None), 1, *cube)] = amp[(slice(None), 0, *cube)]
    mixed = torch.fft.ifftshift(torch.polar(swapped, phase), dim=(-3, -2))
    out[:, [a, b]] = torch.fft.irfftn(mixed, s=dims, dim=(-3, -2, -1)).to(x.dtype)
    return out


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) from two order statistics: about 10x faster on a
    volume, and with no cap on the number of elements."""
    flat = values.flatten()
    pos = q * (flat.numel() - 1)
    lo = int(pos)
    low = flat.kthvalue(lo + 1).values
    if lo + 1 >= flat.numel():
        return low
    return low + (pos - lo) * (flat.kthvalue(lo + 2).values - low)


def dilate(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """3D max-pool dilation with a cubic ``kernel`` (stride 1, same size), done as three 1D max-pools: the same
    result as one cubic pool at 3k instead of k³ comparisons per voxel."""
    out = mask.float()
    for axis in range(3):
        size, pad = [1, 1, 1], [0, 0, 0]
        size[axis], pad[axis] = kernel, kernel // 2
        out = F.max_pool3d(out, tuple(size), stride=1, padding=tuple(pad))
    return out > 0


def patch_swap(x: torch.Tensor, p_ref: torch.Tensor, a: int, b: int, q: float, kernel: int) -> torch.Tensor:
    """Swap sequences a and b inside the dilated most-uncertain region of the teacher's prediction."""
    unc = binary_entropy(p_ref).mean(dim=1, keepdim=True)
    mask = dilate(unc > quantile(unc, q), kernel)
    out = x.clone()
    out[:, a : a + 1] = torch.where(mask, x[:, b : b + 1], x[:, a : a + 1])
    out[:, b : b + 1] = torch.where(mask, x[:, a : a + 1], x[:, b : b + 1])
    return out


class Adapter:
    """Holds the adapted model(s) across a stream of volumes (one agent thread, or one benchmark domain).

    It takes ownership of ``source``: the module becomes the student (channels-last, BN affine trainable)."""

    def __init__(self, source: nn.Module, cfg: TTAConfig):
        self.cfg = cfg
        self.source_state = copy.deepcopy(source.state_dict())
        self.student = source.to(memory_format=FORMAT)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.volumes = 0
        self.reset()

    def reset(self) -> None:
        """Back to the source weights (start of a stream, or every volume when episodic)."""
        self.student.load_state_dict(self.source_state)
        for p in self.student.parameters():
            p.requires_grad_(False)
        self.teacher = None
        self.optimizer = None
        if self.cfg.method == "none":
            self.student.eval()
            return
        params = bn_affine_params(self.student)
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(params, lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=0.0)
        if self.cfg.method == "vista":
            self.teacher = copy.deepcopy(self.student).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Adapt on one volume (1, 4, D, H, W), then predict it. Returns probabilities (1, 3, D, H, W) and stats."""
        if self.cfg.episodic and self.volumes:
            self.reset()
        self.volumes += 1
        start = time.perf_counter()
        x = x.contiguous(memory_format=FORMAT)
        losses = []
        if self.cfg.method == "tent":
            losses = [self._tent_step(x) for _ in range(self.cfg.steps)]
        elif self.cfg.method == "vista":
            losses = [self._vista_step(x) for _ in range(self.cfg.steps)]
        with torch.no_grad():
            if self.cfg.method == "vista":
                with batch_statistics(self.teacher, self.cfg.teacher_bn == "batch"):
                    probs = torch.sigmoid(self.teacher(x))
            else:
                set_bn_mode(self.student, train=self.cfg.method == "tent")
                probs = torch.sigmoid(self.student(x))
        stats = {
            "method": self.cfg.method,
            "steps": len(losses),
            "seconds": time.perf_counter() - start,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
        }
        return probs, stats

    def _tent_step(self, x: torch.Tensor) -> float:
        set_bn_mode(self.student, train=True)
        loss = binary_entropy(torch.sigmoid(self.student(x))).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _pair(self) -> tuple[int, int]:
        return PAIRS[int(torch.randint(len(PAIRS), (1,), generator=self.generator))]

    def _vista_step(self, x: torch.Tensor) -> float:
        cfg = self.cfg
        with torch.no_grad():
            p_ref = hierarchy_fix(torch.sigmoid(self.teacher(x)))
            views = torch.cat(
                [
                    lowfreq_swap(x, *self._pair(), cfg.lowfreq_ratio),
                    patch_swap(x, p_ref, *self._pair(), cfg.unc_quantile, cfg.dilation),
                ]
            )
            probs = torch.cat([p_ref, torch.sigmoid(self.teacher(views))])
            p_var = ((probs**2).mean(0) - probs.mean(0) ** 2).clamp_min(0)
            gate = p_var <= cfg.var_thr
            pos = (p_ref >= cfg.pos_thr) & gate
            neg = (p_ref <= cfg.neg_thr) & gate
            weight = pos.float() + cfg.neg_weight * neg.float()
            target = pos.float()
        set_bn_mode(self.student, train=True)
        logits = self.student(x)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss_pl = (weight * bce).sum() / weight.sum().clamp_min(1.0)
        set_bn_mode(self.student, train=False)  # eval-mode BN is per sample, so both views go as one batch
        loss_cons = F.binary_cross_entropy_with_logits(self.student(views), p_ref.expand(len(views), *p_ref.shape[1:]))
        loss = cfg.w_pl * loss_pl + cfg.w_cons * loss_cons
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._update_teacher()
        return float(loss.detach())

    @torch.no_grad()
    def _update_teacher(self) -> None:
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(self.cfg.ema).add_(s.detach(), alpha=1 - self.cfg.ema)
        for t, s in zip(self.teacher.buffers(), self.student.buffers()):
            t.copy_(s)
