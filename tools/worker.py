"""Tool isolation: an atomic tool call runs in a worker process that the executor can kill.

A hanging tool must not block a turn forever, and one oversized input must not take the agent (and every other
thread of the process) down with it. So the executor hands each atomic call to a worker and waits with a clock and
a memory gauge: a worker past the tool's wall-clock limit (``ToolSpec.timeout_s``) or memory limit
(``ToolSpec.memory_mb``: what the call may add to the worker's resident memory, read from ``/proc`` every 50 ms, on
top of the models and cases it already holds) is killed with SIGKILL and the call fails, naming the
limit, as a tool message the policy can read.

Workers are *spawned*, not forked: libgomp hangs in a child forked after the parent ran OpenMP work, which the
policy always has. They are stateless between calls: a request carries the tool, the case, the artifact history
and the thread's session, and the reply carries the result, the inputs used and the session back, so a killed call
leaves the thread's state exactly as it was before it. A pool keeps idle workers with their loaded models and
decoded case, so only a worker's first call pays its start (about 3 s of imports, which :meth:`WorkerPool.prestart`
overlaps with the policy's own loading).

``MACRO_TOOL_TIMEOUT_S`` and ``MACRO_TOOL_MEMORY_MB`` override every tool's limits (a slower machine, a larger
scan); ``MACRO_TOOL_ISOLATION=0`` runs tools in the agent's process (for a debugger), without limits.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from macro.case import Case
from macro.errors import CaseError, MacroError
from macro.tools.base import MacroTool, ToolContext, ToolFailure, ToolResult

POLL_S = 0.05
START_S = 300.0  # a worker's imports and the tool's unpickling, before its own time limit starts
STARTED = "started"
CASES_KEPT = 2  # decoded cases a worker keeps


@dataclass(frozen=True)
class Limits:
    seconds: float
    memory_mb: int

    @classmethod
    def of(cls, tool: MacroTool) -> "Limits":
        """The tool's own limits unless the environment overrides them."""
        seconds = os.environ.get("MACRO_TOOL_TIMEOUT_S")
        memory = os.environ.get("MACRO_TOOL_MEMORY_MB")
        return cls(
            float(seconds) if seconds else tool.spec.timeout_s,
            int(memory) if memory else tool.spec.memory_mb,
        )


@dataclass
class Outcome:
    """A call's result, or the error the policy reads with the steps and artifacts a composite made before it."""

    result: ToolResult | None = None
    error: str | None = None
    children: tuple = ()
    artifacts: tuple = ()
    used: dict | None = None
    session: dict | None = None
    value: Any = None  # what a function run by :meth:`WorkerPool.apply` returned
    raised: CaseError | None = None  # the scan's own problem, raised again in the caller


def isolation_enabled() -> bool:
    return os.environ.get("MACRO_TOOL_ISOLATION", "1") != "0"


def execute(tool: MacroTool, ctx: ToolContext, args: Any) -> Outcome:
    """Run ``tool`` and turn every way it can fail into an error for the policy (the one mapping, used in and out
    of workers)."""
    name = tool.name
    try:
        result = tool.execute(ctx, args)
    except ToolFailure as exc:
        return Outcome(error=str(exc), children=tuple(exc.children), artifacts=tuple(exc.artifacts))
    except CaseError as exc:  # the policy needs the problem, not the full path
        return Outcome(error=(f"{Path(exc.path).name}: " if exc.path else "") + exc.problem)
    except MacroError as exc:
        return Outcome(error=str(exc))
    except MemoryError:
        return Outcome(error=f"{name} ran out of memory")
    except Exception as exc:  # the agent survives any tool bug; the policy sees what happened
        return Outcome(error=f"{name} failed: {type(exc).__name__}: {exc}")
    return Outcome(result=result, used=dict(ctx.used), session=ctx.session)


def _nested_unavailable(call: dict, history: list[dict]):
    raise MacroError("an atomic tool cannot call other tools; make it a composite")


def _serve(conn: Connection) -> None:
    """The worker's loop: one request in, one :class:`Outcome` out, until the pipe closes."""
    while True:
        try:
            setting, payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        name = setting["tool"]
        try:
            _adopt(setting)
            request = pickle.loads(payload)
            conn.send(STARTED)
            outcome = _handle(request)
        except Exception as exc:  # the tool's module is not importable here, or the request is unusable
            outcome = Outcome(error=f"{name} could not run in its worker process: {type(exc).__name__}: {exc}")
        try:
            conn.send(outcome)
        except OSError:  # the caller stopped listening (it gave up on the call or exited): nobody to tell
            return
        except Exception as exc:  # a result or session state that does not pickle
            conn.send(Outcome(error=f"{name} returned something that cannot leave its worker process: {exc}"))


def _adopt(setting: dict) -> None:
    """Take the caller's MACRO_* variables, import path and torch threads: the pool outlives changes to them."""
    for key in [k for k in os.environ if k.startswith("MACRO_")]:
        os.environ.pop(key)
    os.environ.update(setting["env"])
    sys.path[:] = setting["path"]
    if setting["threads"]:
        import torch

        torch.set_num_threads(setting["threads"])


_DECODED: dict[str, Any] = {}  # in a worker: the cases it has decoded, oldest first


def _decoded(case: Case) -> Case:
    """This worker's copy of ``case`` (decoded voxels included, so the calls of one turn decode the scan once)."""
    kept = _DECODED.pop(case.id, None) or case
    _DECODED[case.id] = kept
    while len(_DECODED) > CASES_KEPT:
        _DECODED.pop(next(iter(_DECODED)))
    return kept


def _handle(request: dict) -> Outcome:
    case = _decoded(request["case"])
    if "function" in request:
        try:
            return Outcome(value=request["function"](case))
        except CaseError as exc:
            return Outcome(error=str(exc), raised=exc)
    ctx = ToolContext(
        case=case,
        store=request["store"],
        history=request["history"],
        session=request["session"],
        call=_nested_unavailable,
    )
    return execute(request["tool"], ctx, request["args"])


def check_voxels(case: Case) -> None:
    """Decode the scan and raise the CaseError of NaN/inf or blank voxels or a bad reference mask."""
    case.image  # noqa: B018
    case.labels  # noqa: B018


def on_voxels(function: Callable[[Case], Any], case: Case) -> Any:
    """``function(case)`` where the tools read the scan: in a tool worker when tools are isolated, so the agent's
    process never holds the voxels and a turn decodes them once, else here. ``function`` must be importable by
    name; a problem with the scan raises its CaseError here."""
    if not isolation_enabled():
        return function(case)
    return POOL.apply(function, case, VOXEL_LIMITS)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB, from /proc (None where there is no such process or no /proc)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class _Worker:
    def __init__(self):
        spawn = multiprocessing.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.process = spawn.Process(target=_serve, args=(child,), daemon=True, name="macro-tool-worker")
        self.process.start()
        child.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def rss_mb(self) -> float | None:
        return rss_mb(self.process.pid)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class WorkerPool:
    """Idle workers of this process, lent one per call so concurrent threads never share one."""

    def __init__(self):
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def prestart(self) -> None:
        """Start a worker now, so its imports overlap with whatever the caller does next."""
        if isolation_enabled():
            with self._lock:
                if not self._idle:
                    self._idle.append(_Worker())

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
        return _Worker()

    def run(self, tool: MacroTool, ctx: ToolContext, args: Any, limits: Limits) -> Outcome:
        """Run ``tool`` on ``ctx`` with its validated ``args`` in a worker, within ``limits``."""
        request = {"tool": tool, "args": args, "case": ctx.case, "store": ctx.store, "history": ctx.history}
        return self._call(tool.name, {**request, "session": ctx.session}, limits)

    def apply(self, function: Callable[[Case], Any], case: Case, limits: Limits) -> Any:
        """``function(case)`` in a worker, within ``limits``; its value, or the scan's CaseError raised here."""
        name = getattr(function, "__name__", "function")
        outcome = self._call(name, {"function": function, "case": case}, limits)
        if outcome.raised is not None:
            raise outcome.raised
        if outcome.error is not None:
            raise MacroError(outcome.error)
        return outcome.value

    def _call(self, name: str, request: dict, limits: Limits) -> Outcome:
        torch = sys.modules.get("torch")
        setting = {
            "tool": name,
            "env": {k: v for k, v in os.environ.items() if k.startswith("MACRO_")},
            "path": list(sys.path),
            "threads": torch.get_num_threads() if torch is not None else None,
        }
        try:
            payload = pickle.dumps((setting, pickle.dumps(request)))
        except Exception as exc:
            return Outcome(error=f"{name} cannot run in a worker process ({type(exc).__name__}: {exc})")
        worker = self._take()
        try:
            worker.conn.send_bytes(payload)
            return self._wait(worker, name, limits)
        except (EOFError, OSError):  # a broken pipe too
            code = worker.process.exitcode
            worker.kill()
            return Outcome(error=f"{name} failed: its worker process died (exit code {code})")

    def _wait(self, worker: _Worker, name: str, limits: Limits) -> Outcome:
        """The outcome, once the worker has said it started (its imports do not count against the tool's time)."""
        deadline, started, base = time.monotonic() + START_S, False, 0.0
        while True:
            while not worker.conn.poll(POLL_S):
                rss = worker.rss_mb() if started else None  # a worker's imports are not the call's memory
                if rss is not None and rss - base > limits.memory_mb:
                    worker.kill()
                    return Outcome(
                        error=f"{name} was stopped: it used more than its memory limit ({limits.memory_mb} MB)"
                    )
                if time.monotonic() > deadline:
                    worker.kill()
                    limit = f"time limit ({limits.seconds:g} s)" if started else f"worker's start limit ({START_S:g} s)"
                    return Outcome(error=f"{name} was stopped: it ran past its {limit}")
                if not worker.alive():
                    raise EOFError
            message = worker.conn.recv()
            if message != STARTED:
                break
            deadline, started, base = time.monotonic() + limits.seconds, True, worker.rss_mb() or 0.0
        with self._lock:
            self._idle.append(worker)
        return message


POOL = WorkerPool()
VOXEL_LIMITS = Limits(seconds=300.0, memory_mb=8192)  # decoding and embedding the largest scan allowed
