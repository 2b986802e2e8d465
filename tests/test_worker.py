"""Tool isolation: a hanging or oversized tool is stopped within its bound, the thread's state survives it, and a
tool that cannot reach a worker says why (issue 19, resource limits)."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel
import numpy as np
from pydantic import BaseModel, Field

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.tools.base import MacroTool, ToolResult, ToolSpec
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry

SCAN = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


class Work(BaseModel):
    seconds: float = Field(default=0.0, ge=0)
    megabytes: int = Field(default=0, ge=0)


class Stubborn(MacroTool):
    """Sleeps, fills memory, and counts its calls in the thread's session: what a runaway plug-in does."""

    name: str = "stubborn"
    description: str = "Sleep, then allocate memory."
    args_schema: type[BaseModel] = Work
    spec = ToolSpec(modalities=("*",), timeout_s=5, memory_mb=700)

    def execute(self, ctx, args):
        ctx.session["calls"] = ctx.session.get("calls", 0) + 1
        time.sleep(args.seconds)
        block = np.ones(args.megabytes * 2**18, np.float32)  # touched, so resident
        return ToolResult(text=f"call {ctx.session['calls']}, {block.nbytes >> 20} MB, {ctx.case.shape}")


def run(executor, case, session, **args):
    _, step, _ = executor.run({"name": "stubborn", "args": args, "id": "c"}, case, [], session)
    return step


def test_a_hanging_or_oversized_tool_is_stopped_and_the_thread_keeps_its_state(tmp_path):
    executor = ToolExecutor(Registry([Stubborn()]), ArtifactStore(tmp_path), cache=False, isolate=True)
    case, session = load_case(SCAN), {}
    first = run(executor, case, session)
    assert first.ok and first.summary.startswith("call 1, 0 MB") and session == {"calls": 1}

    start = time.monotonic()
    hung = run(executor, case, session, seconds=3600)
    assert time.monotonic() - start < 5 + 4  # the limit, plus the worker's start it does not count
    assert not hung.ok and "ran past its time limit (5 s)" in hung.error

    hog = run(executor, case, session, megabytes=3000)
    assert not hog.ok and "more than its memory limit (700 MB)" in hog.error

    after = run(executor, case, session, megabytes=10)
    assert after.ok and after.summary.startswith("call 2, 10 MB") and session == {"calls": 2}


def test_the_environment_overrides_a_tools_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("MACRO_TOOL_TIMEOUT_S", "0.5")
    executor = ToolExecutor(Registry([Stubborn()]), ArtifactStore(tmp_path), cache=False, isolate=True)
    step = run(executor, load_case(SCAN), {}, seconds=2)
    assert not step.ok and "time limit (0.5 s)" in step.error


def test_a_tool_whose_module_a_worker_cannot_import_is_reported(tmp_path):
    class Local(Stubborn):  # defined in a function: no worker can import it
        name: str = "stubborn"

    executor = ToolExecutor(Registry([Local()]), ArtifactStore(tmp_path), cache=False, isolate=True)
    step = run(executor, load_case(SCAN), {})
    assert not step.ok and "cannot run in a worker process" in step.error
