"""The federated round as two plain functions, and the in-process runner that calls them.

Why this shape: a method (FedAvg, FedLSM, FCU's post-training) is a ``ClientFn`` (what one site does with the
global weights in one round) plus an ``AggregateFn`` (how the server merges the sites' results). The in-process
simulation below and the Flower app (:mod:`macro.federated.flower_app`) call the very same two functions, so a
benchmark run here and a real multi-site run differ only in transport.

States are ``state_dict``-like mappings of name -> CPU tensor; every client result carries its sample count and a
JSON-able ``stats`` dict for method-specific messages (FedLSM's per-class positive estimates, losses, timings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

State = dict[str, torch.Tensor]


@dataclass
class ClientResult:
    client: int
    state: State
    n_samples: int
    stats: dict = field(default_factory=dict)


ClientFn = Callable[[State, int, int], ClientResult]  # (global state, client id, round) -> result
AggregateFn = Callable[[State, Sequence[ClientResult], int], State]  # (global state, results, round) -> new state


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """Σ w_k θ_k / Σ w_k per tensor; integer buffers (BatchNorm's batch counter) take the first client's value."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("federated averaging needs a positive total weight")
    out: State = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key].float() * (w / total) for s, w in zip(states, weights)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def fedavg(global_state: State, results: Sequence[ClientResult], round_: int = 0, equal: bool = False) -> State:
    """FedAvg: weights proportional to each client's sample count (``equal``: one vote per client, as FCU's
    post-training does)."""
    return weighted_average([r.state for r in results], [1.0 if equal else r.n_samples for r in results])


def local_model(
    model_fn: Callable[[], torch.nn.Module],
    state: Mapping[str, torch.Tensor],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> tuple[torch.nn.Module, torch.optim.Adam]:
    """A fresh model in train mode holding ``state``, and Adam over its trainable parameters: how every local
    update (FedLSM, plain FedAvg, gradient ascent) starts."""
    model = model_fn()
    model.load_state_dict(state)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def simulate(
    state: State,
    clients: Sequence[int],
    rounds: int,
    client_fn: ClientFn,
    aggregate_fn: AggregateFn,
    on_round: Callable[[int, State, Sequence[ClientResult]], None] | None = None,
    progress: bool = False,
    desc: str = "federated rounds",
) -> State:
    """Run ``rounds`` rounds in this process: every client trains from the current global state in turn, then
    the server aggregates. ``on_round(round, new_state, results)`` is the hook for evaluation and logging."""
    from tqdm import tqdm

    for round_ in tqdm(range(rounds), desc=desc, disable=not progress, mininterval=5):
        results = [client_fn(state, client, round_) for client in clients]
        state = aggregate_fn(state, results, round_)
        if on_round is not None:
            on_round(round_, state, results)
    return state
