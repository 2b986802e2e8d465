"""FedLSM (research/tool_methods.md §2): federated learning when every client labels only some of the classes.

Model-agnostic: a model is any ``nn.Module`` whose ``forward(x)`` returns ``(feature, logits)`` with its classifier
an ``nn.Linear`` at attribute ``head``; the client's inputs come from :class:`ClientData` view functions, so they may
be images or cached backbone maps. Only parameters with ``requires_grad`` train.

Faithful to the released code:
* per round and client: the teacher is an EMA copy (decay 0.999, updated after every step) of the incoming global
  model; the global model scores every local sample on the weak view (multi-label: mean elementwise −p log p over
  the client's unlabelled classes; single-label: softmax entropy) to form the high-uncertainty pool (top N_u), the
  confident pool (bottom N_c) and the pseudo-label pool (all but the high-uncertainty samples);
* each local iteration: a pseudo batch (teacher on the weak view, student on the strong view) where labelled
  classes keep their labels and unlabelled ones become pseudo-positive at q ≥ τ⁺ (0.85 multi-label / 0.95
  single-label), pseudo-negative at q ≤ τ⁻ = 0.01, else ignored; multi-label loss = mean over (i, c) of
  w_c · m_ic · BCE with the server's global class weights w_c = Σ neg_c / Σ pos_c; single-label: argmax one-hot when
  max softmax ≥ τ⁺, soft-target CE where an all-zero row contributes nothing; UDE MixUp of uncertain with confident
  samples (one λ ~ Beta(0.2, 0.2) per batch; looser thresholds 0.70 / 0.005 for the uncertain sample, 0.85 / 0.01
  for the confident one; a term counts only where both have a confident hard label; weight λ_u = 0.1); one Adam
  step (lr 1e-4, betas (0.9, 0.9999), wd 5e-4) on [strong pseudo batch ‖ mixed batch]; every client keeps its own
  optimiser state across rounds;
* EDD: per class, true positives + confident pseudo-positives in this round's pseudo batches (reset every round);
  AWPA: each classifier row (weight and bias) is averaged with weights q_c^k / (Σ_j q_c^j + ε), everything else
  (BN buffers included) is FedAvg by sample count.

Deviations and choices the notes leave open:
* batch 60/4/4 and pools N_u / N_c (500 / 2000 of ~12k images on CXR) are scaled down: the batch split is a config
  value, the pools default to 5 % / 20 % of the client's data (CPU scale, §2.7);
* a class that no client reports in a round keeps its FedAvg row in AWPA (the code divides by zero there, and ε
  alone would zero the row);
* single-label UDE applies the intended rule (an unlabelled sample takes the teacher's argmax when its max softmax
  passes the tier's τ⁺): in the released ISIC code this step never fires because it tests for an all-zero softmax;
* the mixed inputs are the strong views (the student's view everywhere else; the notes do not say which);
* class weights count negatives only inside each client's label set, where a 0 means "negative" (§2.1); a class
  without positives or negatives gets weight 1; single-label CE is unweighted (the notes weight only the CXR loss);
* the uncertainty mean is over the unlabelled classes rather than all C with labelled ones zeroed: the ranking, and
  so the tiers, are the same;
* with UDE off (ablations), the pseudo batch is drawn from all samples and is ``batch_pseudo + batch_mix`` large,
  so every variant's student sees the same batch size; the teacher's BN buffers follow the same EMA as its weights;
* each batch is drawn without replacement, independently every iteration (no epoch-wise data loader).

Baselines and ablations share this harness (same optimiser, rounds, iterations, batch): :data:`VARIANTS` holds
``fedavg`` (missing labels as negatives, plain unweighted loss), ``fedavg_labelled`` (masked loss, with FedLSM's class
weights so that each later step adds one component), ``pl``, ``pl_ude`` and ``fedlsm`` (everything on). For
single-label data an erased row has no "negative" form under a softmax, so the two FedAvg baselines coincide there
(the row contributes nothing in both).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from macro.federated.engine import AggregateFn, ClientFn, ClientResult, State, fedavg, local_model, simulate
from macro.metrics import roc_auc


@dataclass
class ClientData:
    weak: Callable[[np.ndarray], torch.Tensor]
    strong: Callable[[np.ndarray], torch.Tensor]
    labels: torch.Tensor
    label_mask: torch.Tensor
    multi_label: bool

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class FedLSMConfig:
    rounds: int = 50
    local_iters: int = 10  # CXR; the ISIC runs use 30
    batch_pseudo: int = 60
    batch_mix: int = 4  # uncertain and confident samples per iteration (each)
    n_uncertain: float = 0.05  # < 1: fraction of the client's data; ≥ 1: a count
    n_confident: float = 0.20
    tau_pos: float | None = None  # None: 0.85 multi-label, 0.95 single-label
    tau_neg: float = 0.01
    mix_pos_uncertain: float = 0.70
    mix_neg_uncertain: float = 0.005
    mix_pos_confident: float = 0.85
    mix_neg_confident: float = 0.01
    beta: float = 0.2
    lambda_u: float = 0.1
    ema: float = 0.999
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.9999)
    weight_decay: float = 5e-4
    temperature: float = 1.0
    eval_batch: int = 256
    awpa_eps: float = 1e-8
    missing_as_negative: bool = False
    class_weights: bool = True
    pseudo_label: bool = True
    ude: bool = True
    awpa: bool = True
    seed: int = 0

    def pos_threshold(self, multi_label: bool) -> float:
        if self.tau_pos is not None:
            return self.tau_pos
        return 0.85 if multi_label else 0.95

    @classmethod
    def variant(cls, name: str, **overrides) -> FedLSMConfig:
        """A baseline or ablation step of :data:`VARIANTS`, with any other field overridden."""
        if name not in VARIANTS:
            raise ValueError(f"unknown FedLSM variant {name!r}; choose one of {', '.join(VARIANTS)}")
        return replace(cls(**overrides), **VARIANTS[name])


VARIANTS: dict[str, dict] = {
    "fedavg": dict(missing_as_negative=True, class_weights=False, pseudo_label=False, ude=False, awpa=False),
    "fedavg_labelled": dict(pseudo_label=False, ude=False, awpa=False),
    "pl": dict(ude=False, awpa=False),
    "pl_ude": dict(awpa=False),
    "fedlsm": dict(),
}


def class_weights(clients: Iterable[ClientData]) -> torch.Tensor:
    """Server side: w_c = Σ_k #neg_c / Σ_k #pos_c from the clients' partial labels (only where c is labelled)."""
    pos = neg = None
    for d in clients:
        mask = d.label_mask.float()
        p = d.labels.float().sum(0) * mask
        n = (1 - d.labels.float()).sum(0) * mask
        pos, neg = (p, n) if pos is None else (pos + p, neg + n)
    return torch.where((pos > 0) & (neg > 0), neg / pos.clamp_min(1), torch.ones_like(pos))


def probabilities(logits: torch.Tensor, multi_label: bool, temperature: float = 1.0) -> torch.Tensor:
    return torch.sigmoid(logits / temperature) if multi_label else torch.softmax(logits / temperature, dim=1)


def uncertainty(probs: torch.Tensor, label_mask: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Per-sample uncertainty: mean −p log p over the unlabelled classes (multi-label) or softmax entropy."""
    entr = -probs * probs.clamp_min(1e-12).log()
    if not multi_label:
        return entr.sum(1)
    unlabelled = 1 - label_mask.float()
    return (entr * unlabelled).sum(1) / unlabelled.sum().clamp_min(1)


def _count(spec: float, n: int) -> int:
    return int(round(spec * n)) if spec < 1 else int(spec)


def tiers(unc: torch.Tensor, n_uncertain: float, n_confident: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(high-uncertainty pool, confident pool, pseudo-label pool): the top N_u, the bottom N_c, all but the top N_u.

    Both pools keep at least one sample and never overlap."""
    n = len(unc)
    if n < 2:
        raise ValueError("UDE needs at least two samples on a client")
    order = np.argsort(unc.numpy(), kind="stable")
    n_u = min(max(_count(n_uncertain, n), 1), n - 1)
    n_c = min(max(_count(n_confident, n), 1), n - n_u)
    return order[n - n_u :], order[:n_c], order[: n - n_u]


def pseudo_labels(
    q: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor, multi_label: bool, tau_pos: float, tau_neg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and loss mask (both (B, C)) from the teacher's probabilities ``q``.

    Multi-label: labelled classes keep their label; an unlabelled class is 1 at q ≥ τ⁺, 0 at q ≤ τ⁻, masked out in
    between. Single-label: a sample without a label in the set takes the argmax one-hot when max q ≥ τ⁺; the mask is
    per row (a row without any target is all-zero and contributes nothing)."""
    labels = labels.float()
    if multi_label:
        known = label_mask.float().expand_as(labels)
        pos, neg = (q >= tau_pos).float(), (q <= tau_neg).float()
        target = known * labels + (1 - known) * pos
        mask = torch.clamp(known + pos + neg, max=1.0)
        return target, mask
    has = labels.sum(1, keepdim=True) > 0
    conf = q.max(1, keepdim=True).values >= tau_pos
    onehot = F.one_hot(q.argmax(1), q.shape[1]).float()
    target = torch.where(has, labels, onehot * conf)
    return target, (has | conf).float().expand_as(labels)


def mix(
    x_u: torch.Tensor,
    x_c: torch.Tensor,
    t_u: torch.Tensor,
    m_u: torch.Tensor,
    t_c: torch.Tensor,
    m_c: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UDE MixUp: inputs and targets mixed with one λ; an entry counts only where both sources have a hard label."""
    return lam * x_u + (1 - lam) * x_c, lam * t_u + (1 - lam) * t_c, m_u * m_c


def label_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    multi_label: bool,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-label: mean over (i, c) of w_c · m_ic · BCE. Single-label: soft-target CE averaged over the batch,
    masked rows contributing zero."""
    if logits.shape[0] == 0:
        return logits.sum()
    if multi_label:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * mask
        if weight is not None:
            bce = bce * weight
        return bce.mean()
    return -(mask * target * F.log_softmax(logits, dim=1)).sum(1).mean()


def _sample(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    return rng.choice(pool, size=k, replace=len(pool) < k)


@torch.no_grad()
def predict(
    model: nn.Module, view: Callable[[np.ndarray], torch.Tensor], n: int, batch_size: int = 256
) -> torch.Tensor:
    """Logits (n, C) of ``model`` in eval mode over samples 0..n−1 of ``view``."""
    was_training = model.training
    model.eval()
    out = [model(view(np.arange(i, min(i + batch_size, n))))[1] for i in range(0, n, batch_size)]
    model.train(was_training)
    return torch.cat(out).float()


@torch.no_grad()
def _ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        if t.is_floating_point():
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        else:
            t.copy_(s)


def _frozen_copy(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    twin.requires_grad_(False)
    return twin


def fedlsm_client(
    model_fn: Callable[[], nn.Module],
    data: Mapping[int, ClientData],
    cfg: FedLSMConfig,
    optimizer_states: dict[int, dict] | None = None,
    weight: torch.Tensor | None = None,
) -> ClientFn:
    """One client's round of FedLSM (or of a :data:`VARIANTS` baseline), as an engine ``ClientFn``.

    ``optimizer_states`` (client -> Adam state) persists across rounds; pass a dict to keep it outside the closure.
    ``weight`` defaults to :func:`class_weights` over all clients (computed once, as the server does)."""
    states = {} if optimizer_states is None else optimizer_states
    multi_label = next(iter(data.values())).multi_label
    if weight is None and cfg.class_weights and multi_label:
        weight = class_weights(data.values())
    if not (cfg.class_weights and multi_label):
        weight = None

    def client_fn(global_state: State, client: int, round_: int) -> ClientResult:
        start = time.perf_counter()
        d = data[client]
        model, optimizer = local_model(model_fn, global_state, cfg.lr, cfg.betas, cfg.weight_decay)
        if client in states:
            optimizer.load_state_dict(states[client])
        teacher = _frozen_copy(model)
        rng = np.random.default_rng([cfg.seed, client, round_])
        tau_pos = cfg.pos_threshold(d.multi_label)
        teach = lambda idx: probabilities(teacher(d.weak(idx))[1], d.multi_label, cfg.temperature)  # noqa: E731

        everything = np.arange(len(d))
        pseudo_pool, n_pseudo = everything, cfg.batch_pseudo + cfg.batch_mix
        if cfg.ude:
            probs = probabilities(predict(teacher, d.weak, len(d), cfg.eval_batch), d.multi_label, cfg.temperature)
            uncertain, confident, pseudo_pool = tiers(
                uncertainty(probs, d.label_mask, d.multi_label), cfg.n_uncertain, cfg.n_confident
            )
            n_pseudo = cfg.batch_pseudo

        edd = torch.zeros(d.labels.shape[1])
        losses = []
        for _ in range(cfg.local_iters):
            idx = _sample(rng, pseudo_pool, n_pseudo)
            labels = d.labels[idx].float()
            with torch.no_grad():
                if cfg.pseudo_label:
                    target, mask = pseudo_labels(teach(idx), labels, d.label_mask, d.multi_label, tau_pos, cfg.tau_neg)
                elif cfg.missing_as_negative:
                    target, mask = labels, torch.ones_like(labels)
                else:
                    target = labels
                    mask = (
                        d.label_mask.float().expand_as(labels)
                        if d.multi_label
                        else (labels.sum(1, keepdim=True) > 0).float().expand_as(labels)
                    )
            edd += (target * mask).sum(0)
            inputs = [d.strong(idx)]
            if cfg.ude:
                idx_u, idx_c = _sample(rng, uncertain, cfg.batch_mix), _sample(rng, confident, cfg.batch_mix)
                with torch.no_grad():
                    t_u, m_u = pseudo_labels(
                        teach(idx_u),
                        d.labels[idx_u],
                        d.label_mask,
                        d.multi_label,
                        cfg.mix_pos_uncertain,
                        cfg.mix_neg_uncertain,
                    )
                    t_c, m_c = pseudo_labels(
                        teach(idx_c),
                        d.labels[idx_c],
                        d.label_mask,
                        d.multi_label,
                        cfg.mix_pos_confident,
                        cfg.mix_neg_confident,
                    )
                lam = float(rng.beta(cfg.beta, cfg.beta))
                x_mix, t_mix, m_mix = mix(d.strong(idx_u), d.strong(idx_c), t_u, m_u, t_c, m_c, lam)
                inputs.append(x_mix)
            logits = model(torch.cat(inputs))[1]
            loss = label_loss(logits[: len(idx)], target, mask, d.multi_label, weight)
            if cfg.ude:
                loss = loss + cfg.lambda_u * label_loss(logits[len(idx) :], t_mix, m_mix, d.multi_label, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _ema_update(teacher, model, cfg.ema)
            losses.append(float(loss.detach()))
        states[client] = optimizer.state_dict()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return ClientResult(
            client,
            state,
            len(d),
            {
                "edd": edd.tolist(),
                "loss": float(np.mean(losses)) if losses else None,
                "seconds": time.perf_counter() - start,
            },
        )

    return client_fn


def awpa(
    global_state: State, results: Sequence[ClientResult], round_: int = 0, head: str = "head", eps: float = 1e-8
) -> State:
    """AWPA: FedAvg by sample count, then each classifier row c (weight and bias) re-averaged with weights
    q_c^k / (Σ_j q_c^j + ε) from the clients' EDD; a class with no estimate anywhere keeps its FedAvg row."""
    out = fedavg(global_state, results, round_)
    q = torch.tensor([r.stats["edd"] for r in results], dtype=torch.float64)  # (K, C)
    total = q.sum(0)
    share = q / (total + eps)
    seen = total > 0
    for key in (f"{head}.weight", f"{head}.bias"):
        if key not in out:
            continue
        stacked = torch.stack([r.state[key].double() for r in results])  # (K, C, ...)
        w = share.view(*share.shape, *([1] * (stacked.dim() - 2)))
        proxy = (w * stacked).sum(0)
        keep = seen.view(-1, *([1] * (stacked.dim() - 2)))
        out[key] = torch.where(keep, proxy, out[key].double()).to(out[key].dtype)
    return out


def aggregator(cfg: FedLSMConfig, head: str = "head") -> AggregateFn:
    return partial(awpa, head=head, eps=cfg.awpa_eps) if cfg.awpa else fedavg


def run(
    model_fn: Callable[[], nn.Module],
    data: Mapping[int, ClientData],
    cfg: FedLSMConfig,
    init_state: State | None = None,
    on_round: Callable[[int, State, Sequence[ClientResult]], None] | None = None,
    progress: bool = False,
    head: str = "head",
) -> State:
    """Federated training of one variant over all clients in ``data``; returns the final global state. Without
    ``init_state`` the initial model is drawn after seeding torch with ``cfg.seed``, so variants start alike."""
    if init_state is None:
        torch.manual_seed(cfg.seed)
        init_state = {k: v.detach().clone() for k, v in model_fn().state_dict().items()}
    return simulate(
        init_state,
        sorted(data),
        cfg.rounds,
        fedlsm_client(model_fn, data, cfg),
        aggregator(cfg, head),
        on_round=on_round,
        progress=progress,
        desc="FedLSM rounds",
    )


def mean_auc(scores, targets) -> tuple[float, list[float | None]]:
    """Mean per-class ROC-AUC in points over the classes present (both positives and negatives) in ``targets``.

    ``targets``: (N, C) binary (multi-label columns, or one-hot for single-label one-vs-rest) or (N,) class ids.
    Returns (mean, per-class list with None where a class is absent)."""
    scores = np.asarray(torch.as_tensor(scores).float())
    targets = np.asarray(torch.as_tensor(targets))
    if targets.ndim == 1:
        targets = np.eye(scores.shape[1])[targets.astype(int)]
    per_class = [roc_auc(scores[:, c], targets[:, c] > 0.5) for c in range(scores.shape[1])]
    present = [100.0 * a for a in per_class if not np.isnan(a)]
    return (
        float(np.mean(present)) if present else float("nan"),
        [None if np.isnan(a) else 100.0 * a for a in per_class],
    )


def evaluate(model: nn.Module, data: ClientData, batch_size: int = 256) -> dict:
    """Mean AUC and accuracy (points) on the weak view: single-label accuracy over rows with a label (argmax),
    multi-label accuracy over all entries at p ≥ 0.5."""
    logits = predict(model, data.weak, len(data), batch_size)
    probs = probabilities(logits, data.multi_label)
    labels = data.labels.float()
    auc, per_class = mean_auc(probs, labels)
    if data.multi_label:
        acc = float(((probs >= 0.5).float() == labels).float().mean()) * 100
    else:
        has = labels.sum(1) > 0
        acc = float((probs.argmax(1) == labels.argmax(1))[has].float().mean()) * 100 if has.any() else float("nan")
    return {"auc": auc, "auc_per_class": per_class, "acc": acc, "error": 100.0 - acc}
