"""Flower transport for the federated engine: the same ``ClientFn``/``AggregateFn`` pair that
:func:`macro.federated.engine.simulate` calls in one process, run across real sites.

Why a transport and not a second implementation: a method (FedLSM's class-wise AWPA, FCU's equal-weight FedAvg) is
defined once, in :mod:`macro.federated.engine` terms. Here a Flower ``ClientApp`` turns each training message into a
``ClientFn`` call and a strategy hands the replies to the ``AggregateFn``, so a benchmark run in simulation and a
deployment over a SuperLink differ only in how the tensors travel.

Which method runs is not wired into this module: the run config names a *task factory* (``task =
"package.module:function"``) that returns ``(init_state, client_fn, aggregate_fn)``; server and sites import it from
their own installed copy of the code, and each site finds its share of the federation through ``partition-id`` in
its SuperNode's node config. :func:`write_app` writes the small Flower app folder that ``flwr run`` ships.

Round numbers: Flower counts rounds from 1, the engine from 0; the conversion happens here so the functions see the
same ``round_`` in both runners.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import torch
from safetensors.torch import save_file

from macro.federated.engine import AggregateFn, ClientFn, ClientResult, State, fedavg

try:
    import tomli_w
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
except ImportError as exc:  # the rest of macro must import without Flower, so only this module needs it
    raise ImportError(
        "macro.federated.flower_app needs Flower, the optional 'federated' extra: pip install "
        "'macro-agent[federated]' (from a checkout: pip install -e '.[federated]')"
    ) from exc

APP_COMPONENTS = {"serverapp": f"{__name__}:server_app", "clientapp": f"{__name__}:client_app"}
RESULT_KEY = "result"  # the ConfigRecord with the client id and the JSON stats in every train reply


class Method(NamedTuple):
    """What a task factory returns: the starting global state and the method's two functions."""

    init_state: State
    client_fn: ClientFn
    aggregate_fn: AggregateFn


def load_task(config: Mapping[str, Any]) -> Method:
    """Import and call the factory that ``config["task"]`` names (``module:function``), passing it ``config``.

    The factory gets the whole config so a method can be parameterised from the run config (learning rate, local
    epochs) and, on a site, from its node config (where the site keeps its data). Sites call it every round, because
    Flower starts a fresh ClientApp process per message: a factory should be cheap and leave loading data and
    building models to ``client_fn``."""
    ref = str(config["task"])
    module, sep, attr = ref.partition(":")
    if not sep:
        raise ValueError(f"task must look like 'package.module:function', got {ref!r}")
    return Method(*getattr(importlib.import_module(module), attr)(config))


def state_to_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(dict(state))


def record_to_state(record: ArrayRecord) -> State:
    return dict(record.to_torch_state_dict())


def result_to_content(result: ClientResult) -> RecordDict:
    """A ClientResult as a train reply: FedAvg's plumbing expects exactly one ArrayRecord and one MetricRecord with
    ``num-examples``; the client id and the free-form stats ride in a ConfigRecord as JSON, because MetricRecords only
    hold flat numbers that Flower would average and the stats may be nested (FedLSM's per-class counts)."""
    return RecordDict(
        {
            "arrays": state_to_record(result.state),
            "metrics": MetricRecord({"num-examples": int(result.n_samples)}),
            RESULT_KEY: ConfigRecord({"client": int(result.client), "stats": json.dumps(result.stats)}),
        }
    )


def content_to_result(content: RecordDict) -> ClientResult:
    meta = content[RESULT_KEY]
    return ClientResult(
        client=int(meta["client"]),
        state=record_to_state(content["arrays"]),
        n_samples=int(content["metrics"]["num-examples"]),
        stats=json.loads(str(meta["stats"])),
    )


class EngineStrategy(FedAvg):
    """FedAvg's node sampling and message building, with aggregation handed to an engine ``AggregateFn``.

    Every connected site trains every round, as in ``simulate``; results are sorted by client id before aggregation
    so order-sensitive parts of a method (integer buffers taken from the first client, float summation order) match
    the in-process run. A failed or duplicated site aborts the round instead of being averaged around: a silently
    smaller federation is a different experiment."""

    def __init__(
        self,
        aggregate_fn: AggregateFn,
        num_clients: int,
        on_round: Callable[[int, State, list[ClientResult]], None] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_clients, min_available_nodes=num_clients
        )
        self.aggregate_fn = aggregate_fn
        self.num_clients = num_clients
        self.on_round = on_round
        self._global: State = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = record_to_state(arrays)  # aggregate_train is not given the global state, so keep it here
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        if failed:
            reasons = "; ".join(f"node {m.metadata.src_node_id}: {m.error.reason}" for m in failed)
            raise RuntimeError(f"round {server_round}: {len(failed)} site(s) failed: {reasons}")
        results = sorted((content_to_result(m.content) for m in replies), key=lambda r: r.client)
        clients = [r.client for r in results]
        if len(set(clients)) != len(clients) or len(clients) != self.num_clients:
            raise RuntimeError(
                f"round {server_round}: expected replies from {self.num_clients} sites with distinct "
                f"partition ids, got {clients}; give every SuperNode its own --node-config "
                "'partition-id=N'"
            )
        round_ = server_round - 1
        state = self.aggregate_fn(self._global, results, round_)
        if self.on_round is not None:
            self.on_round(round_, state, results)
        return state_to_record(state), MetricRecord(
            {"num-examples": sum(r.n_samples for r in results), "clients": len(results)}
        )


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One site, one round: the received global state through the task's ``ClientFn``. The site's node config
    (``partition-id``, local paths) is laid over the run config, so a site can point the task at its own data."""
    if "partition-id" not in context.node_config:
        raise ValueError("this SuperNode has no partition-id; start it with --node-config 'partition-id=N'")
    config = {**context.run_config, **context.node_config}
    task = load_task(config)
    round_ = int(msg.content["config"]["server-round"]) - 1
    result = task.client_fn(record_to_state(msg.content["arrays"]), int(config["partition-id"]), round_)
    return Message(content=result_to_content(result), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` rounds over ``num-clients`` sites (a round waits at most ``round-timeout`` seconds for
    the replies), then write the final state to ``out`` (safetensors) and each round's per-client sample counts and
    stats beside it (``<out stem>.rounds.json``), the record that ``simulate``'s ``on_round`` hook would give."""
    config = dict(context.run_config)
    task = load_task(config)
    history: list[dict] = []

    def record(round_: int, _state: State, results: list[ClientResult]) -> None:
        history.append(
            {
                "round": round_,
                "clients": [{"client": r.client, "n_samples": r.n_samples, "stats": r.stats} for r in results],
            }
        )

    strategy = EngineStrategy(task.aggregate_fn, int(config["num-clients"]), on_round=record)
    result = strategy.start(
        grid=grid,
        initial_arrays=state_to_record(task.init_state),
        num_rounds=int(config["num-rounds"]),
        timeout=float(config["round-timeout"]),
    )
    out = Path(str(config["out"])).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(record_to_state(result.arrays), str(out))
    out.with_suffix(".rounds.json").write_text(json.dumps(history, indent=1))


def write_app(
    directory: str | Path,
    task: str,
    out: str | Path,
    num_clients: int,
    num_rounds: int,
    round_timeout: float = 3600.0,
    **task_config: Any,
) -> Path:
    """Write the Flower app folder that ``flwr run DIR`` bundles and sends to the SuperLink.

    It holds only a pyproject.toml: the code is the installed ``macro`` package on every machine, so the bundle just
    names the components and the run config. Every key a run may override with ``--run-config`` has to appear here
    (Flower rejects unknown keys), hence ``task_config`` for the task factory's own settings."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "project": {
            "name": "macro-federated",
            "version": "0.1.0",
            "license": "Apache-2.0",
            "description": "MACRO federated run: engine ClientFn/AggregateFn over Flower",
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "macro",
                    "components": APP_COMPONENTS,
                    "config": {
                        "task": task,
                        "out": str(out),
                        "num-clients": int(num_clients),
                        "num-rounds": int(num_rounds),
                        "round-timeout": float(round_timeout),
                        **task_config,
                    },
                }
            }
        },
    }
    path = directory / "pyproject.toml"
    path.write_text(tomli_w.dumps(pyproject))
    return path


def demo_data(client: int, seed: int = 0, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Site ``client``'s synthetic regression data: its own size and a site-specific offset, so the weighting of the
    aggregate matters and a client mix-up would change the result."""
    gen = torch.Generator().manual_seed(seed * 1000 + client)
    n = 24 + 16 * client
    w_true = torch.arange(1.0, dim + 1)
    x = torch.randn(n, dim, generator=gen)
    y = x @ w_true + 0.5 * client + 0.1 * torch.randn(n, generator=gen)
    return x, y


def demo_task(config: Mapping[str, Any]) -> Method:
    """A linear model trained by a few full-batch gradient steps per round, aggregated with sample-weighted FedAvg:
    small enough for a loopback test, real enough that a wrong client id, weight or round would show."""
    seed, lr, steps = int(config.get("seed", 0)), float(config.get("lr", 0.1)), int(config.get("local-steps", 5))
    dim = 4

    def client_fn(state: State, client: int, round_: int) -> ClientResult:
        x, y = demo_data(client, seed, dim)
        w, b = state["weight"].clone(), state["bias"].clone()
        for _ in range(steps):
            err = x @ w + b - y
            w -= lr * 2 * x.T @ err / len(y)
            b -= lr * 2 * err.mean()
        loss = float(((x @ w + b - y) ** 2).mean())
        return ClientResult(client, {"weight": w, "bias": b}, len(y), {"loss": loss, "round": round_})

    init = {"weight": torch.zeros(dim), "bias": torch.zeros(())}
    return Method(init, client_fn, fedavg)
