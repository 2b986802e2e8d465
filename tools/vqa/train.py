"""Training of the Step-CoT teacher and student (notes 2.7) and of the independent baseline, on cached features.

Schedule (the repo's, with the sizes scaled for 2 CPU cores where noted):
    - Stage A, teacher only: AdamW, at most ``stage_a_epochs`` epochs, ReduceLROnPlateau on the mean validation
      step accuracy (factor 0.5, patience 2), early stop after 3 epochs without a gain, gradient clip 1.0.
    - Stage B, joint distillation, ``stage_b_epochs`` epochs: every batch first takes a teacher CE step, then a
      student step against the latest teacher (its logits and step features detached, computed in eval mode);
      student loss per step CE + 0.5 KD (T = 2) + 1.0 L_CH; the student's optimiser also updates P_s. The
      checkpoint kept is the epoch with the best (teacher mean + student mean) / 2 on validation.
    - Seed 42, batch 32, weight decay 0.01 (AdamW's default).

Deviations: learning rates 1e-3 (teacher) and 2e-3 (student) instead of 5e-5 and 1e-4, because the networks here
start from random weights on a few thousand phantom images (the repo's 10 k real cases; the repo's rates were not
tried here). Stage B's length is the caller's (``macro.eval.vqa.profile``: 20 epochs). One P_s/P_t pair is
shared by the seven steps (the repo does not say whether they are per step).

Baseline: for each step on its own, a small grid (linear or MLP hidden 256; dropout 0.3 or 0.5; lr 1e-3 or 3e-3)
trained with AdamW and early stopping on that step's validation accuracy; the best setting per step is kept, so
the baseline is tuned at least as hard as the chained models.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from macro.tools.vqa.data import StepData
from macro.tools.vqa.losses import ALPHA_CH, ALPHA_KD, ChannelAlignment, kd_loss, masked_ce
from macro.tools.vqa.metrics import predict, step_accuracy
from macro.tools.vqa.model import Baseline, StepClassifier, Student, Teacher

BASELINE_GRID = (
    {"hidden": 0, "dropout": 0.0, "lr": 1e-3},
    {"hidden": 256, "dropout": 0.3, "lr": 1e-3},
    {"hidden": 256, "dropout": 0.5, "lr": 1e-3},
    {"hidden": 256, "dropout": 0.3, "lr": 3e-3},
)


@dataclass
class TrainConfig:
    seed: int = 42
    batch: int = 32
    teacher_lr: float = 1e-3
    student_lr: float = 2e-3
    stage_a_epochs: int = 10
    stage_b_epochs: int = 40
    teacher_hidden: int = 128
    student_hidden: int = 512
    clip: float = 1.0
    baseline_epochs: int = 40
    baseline_patience: int = 5


def _mean_val(model: nn.Module, data: StepData) -> float:
    return float(np.nanmean(step_accuracy(predict(model, data.features["val"]), data.labels["val"])))


def _step_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    return sum(masked_ce(z, labels[:, k]) for k, z in enumerate(logits))


def _batches(n: int, batch: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch] for i in range(0, n, batch)]


def _update(optimiser: torch.optim.Optimizer, loss: torch.Tensor, params, clip: float) -> None:
    optimiser.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    optimiser.step()


def fit_teacher_student(
    data: StepData, cfg: TrainConfig = TrainConfig(), progress: bool = True, log=None
) -> tuple[Teacher, Student, dict]:
    """Stage A then stage B; returns the selected teacher and student (eval mode) and a history."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    x, y = data.features["train"], data.labels_t("train")
    teacher = Teacher(x.shape[1], data.n_classes, data.prompts, hidden=cfg.teacher_hidden)
    student = Student(x.shape[1], data.n_classes, hidden=cfg.student_hidden)
    teacher.norm.fit(x)
    student.norm.fit(x)
    align = ChannelAlignment(cfg.teacher_hidden, cfg.student_hidden)
    t_opt = torch.optim.AdamW(teacher.parameters(), lr=cfg.teacher_lr)
    s_params = list(student.parameters()) + list(align.p_s.parameters())
    s_opt = torch.optim.AdamW(s_params, lr=cfg.student_lr)
    history: dict = {"stage_a": [], "stage_b": []}
    start = time.perf_counter()

    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, mode="max", factor=0.5, patience=2)
    best, best_state, waited = -1.0, None, 0
    for _ in tqdm(range(cfg.stage_a_epochs), desc="stage A (teacher)", file=sys.stderr, disable=not progress):
        teacher.train()
        for idx in _batches(len(x), cfg.batch, generator):
            _update(t_opt, _step_loss(teacher(x[idx])[0], y[idx]), teacher.parameters(), cfg.clip)
        val = _mean_val(teacher, data)
        plateau.step(val)
        history["stage_a"].append(round(val, 2))
        if val > best:
            best, best_state, waited = val, copy.deepcopy(teacher.state_dict()), 0
        else:
            waited += 1
            if waited >= 3:
                break
    teacher.load_state_dict(best_state)

    best, chosen = -1.0, None
    for epoch in tqdm(
        range(cfg.stage_b_epochs), desc="stage B (teacher + student)", file=sys.stderr, disable=not progress
    ):
        for idx in _batches(len(x), cfg.batch, generator):
            teacher.train()
            _update(t_opt, _step_loss(teacher(x[idx])[0], y[idx]), teacher.parameters(), cfg.clip)
            teacher.eval()
            with torch.no_grad():
                t_logits, t_features = teacher(x[idx])
            student.train()
            s_logits, f_student = student(x[idx])
            loss = 0
            for k, z in enumerate(s_logits):
                valid = y[idx, k] >= 0
                loss = (
                    loss
                    + masked_ce(z, y[idx, k])
                    + ALPHA_KD * kd_loss(z, t_logits[k], valid)
                    + ALPHA_CH * align(t_features[k], f_student, valid)
                )
            _update(s_opt, loss, s_params, cfg.clip)
        t_val, s_val = _mean_val(teacher, data), _mean_val(student, data)
        history["stage_b"].append([round(t_val, 2), round(s_val, 2)])
        if (t_val + s_val) / 2 > best:
            best, chosen = (
                (t_val + s_val) / 2,
                (copy.deepcopy(teacher.state_dict()), copy.deepcopy(student.state_dict()), epoch),
            )
        if log:
            log(f"stage B epoch {epoch}: val mean step acc teacher {t_val:.1f} student {s_val:.1f}")
    teacher.load_state_dict(chosen[0])
    student.load_state_dict(chosen[1])
    history.update(selected_epoch=chosen[2], seconds=round(time.perf_counter() - start, 1), config=asdict(cfg))
    return teacher.eval(), student.eval(), history


def _fit_step(
    data: StepData, k: int, setting: dict, cfg: TrainConfig, generator: torch.Generator
) -> tuple[StepClassifier, float]:
    x, y = data.features["train"], data.labels_t("train")[:, k]
    xv, yv = data.features["val"], data.labels["val"][:, k]
    model = StepClassifier(x.shape[1], data.n_classes[k], setting["hidden"], setting["dropout"])
    model.norm.fit(x)
    opt = torch.optim.AdamW(model.parameters(), lr=setting["lr"])
    best, state, waited = -1.0, None, 0
    for _ in range(cfg.baseline_epochs):
        model.train()
        for idx in _batches(len(x), cfg.batch, generator):
            _update(opt, masked_ce(model(x[idx]), y[idx]), model.parameters(), cfg.clip)
        model.eval()
        with torch.no_grad():
            pred = model(xv).argmax(1).numpy()
        valid = yv >= 0
        acc = float(100.0 * (pred[valid] == yv[valid]).mean())
        if acc > best:
            best, state, waited = acc, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= cfg.baseline_patience:
                break
    model.load_state_dict(state)
    return model.eval(), best


def fit_baseline(data: StepData, cfg: TrainConfig = TrainConfig(), progress: bool = True) -> tuple[Baseline, dict]:
    """Seven independent classifiers, each with its setting chosen from ``BASELINE_GRID`` on validation."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    chosen, info = [], []
    start = time.perf_counter()
    with tqdm(
        total=len(data.n_classes) * len(BASELINE_GRID),
        desc="baseline (7 independent classifiers)",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        for k in range(len(data.n_classes)):
            best = None
            for setting in BASELINE_GRID:
                model, acc = _fit_step(data, k, setting, cfg, generator)
                if best is None or acc > best[1]:
                    best = (model, acc, setting)
                bar.update(1)
            chosen.append(best[0])
            info.append({**best[2], "val_acc": round(best[1], 2)})
    return Baseline(chosen).eval(), {"steps": info, "seconds": round(time.perf_counter() - start, 1)}
