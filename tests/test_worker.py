"""Tool isolation: a hanging or oversized tool is stopped within its bound, the thread's state survives it, and a
tool that cannot reach a worker says why (issue 19, resource limits)."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.eval.reliability import RunawayTool
from macro.tools import executor as executor_module
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry
from macro.tools.worker import WorkerPool

SCAN = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


def run(executor, case, session, **args):
    _, step, _ = executor.run({"name": "runaway_probe", "args": args, "id": "c"}, case, [], session)
    return step


def test_a_hanging_or_oversized_tool_is_stopped_and_the_thread_keeps_its_state(tmp_path, monkeypatch):
    executor = ToolExecutor(Registry([RunawayTool()]), ArtifactStore(tmp_path), cache=False, isolate=True)
    case, session = load_case(SCAN), {}
    first = run(executor, case, session)
    assert first.ok and first.summary == "call 1, 0 MB" and session == {"calls": 1}

    start = time.monotonic()
    hung = run(executor, case, session, seconds=3600)
    assert time.monotonic() - start < 2 + 8  # the limit, plus the worker's start it does not count
    assert not hung.ok and "ran past its time limit (2 s)" in hung.error

    # The memory gauge alone must stop this call: under CI's load, filling the pages took the fresh worker past the
    # 2 s time limit before the gauge's next reading once, so the time limit is lifted for it.
    monkeypatch.setenv("MACRO_TOOL_TIMEOUT_S", "60")
    hog = run(executor, case, session, megabytes=3000)
    monkeypatch.delenv("MACRO_TOOL_TIMEOUT_S")
    assert not hog.ok and "more than its memory limit (300 MB)" in hog.error

    after = run(executor, case, session, megabytes=10)
    assert after.ok and after.summary == "call 2, 10 MB" and session == {"calls": 2}


def test_the_environment_overrides_a_tools_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("MACRO_TOOL_TIMEOUT_S", "0.5")
    executor = ToolExecutor(Registry([RunawayTool()]), ArtifactStore(tmp_path), cache=False, isolate=True)
    step = run(executor, load_case(SCAN), {}, seconds=1.5)
    assert not step.ok and "time limit (0.5 s)" in step.error


def test_a_fresh_workers_imports_do_not_count_against_the_calls_memory_limit(tmp_path, monkeypatch):
    """Torch's import alone adds a few hundred MB to a spawned worker: that is not the call's memory (CI killed
    a fresh worker's 10 MB call at a 300 MB limit while it was still importing)."""
    monkeypatch.setenv("MACRO_TOOL_MEMORY_MB", "40")
    executor = ToolExecutor(Registry([RunawayTool()]), ArtifactStore(tmp_path), cache=False, isolate=True)
    monkeypatch.setattr(executor_module, "POOL", WorkerPool())  # a fresh worker, not one that has imported
    step = run(executor, load_case(SCAN), {}, megabytes=10)
    assert step.ok and step.summary == "call 1, 10 MB"


def test_a_tool_whose_module_a_worker_cannot_import_is_reported(tmp_path):
    class Local(RunawayTool):  # defined in a function: no worker can import it
        name: str = "runaway_probe"

    executor = ToolExecutor(Registry([Local()]), ArtifactStore(tmp_path), cache=False, isolate=True)
    step = run(executor, load_case(SCAN), {})
    assert not step.ok and "cannot run in a worker process" in step.error


def test_the_agent_process_checks_a_scan_without_holding_its_voxels(tmp_path):
    """``on_voxels`` runs the check where the tools read the scan: the worker decodes it (and keeps it for the
    turn's calls), the agent's copy stays undecoded, and a bad scan's CaseError comes back as itself."""
    import nibabel as nib
    import numpy as np
    import pytest

    from macro.errors import CaseError
    from macro.tools.worker import check_voxels, on_voxels

    case = load_case(SCAN, check=False)
    on_voxels(check_voxels, case)
    assert "image" not in case.__dict__
    blank = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), blank)
    with pytest.raises(CaseError, match="blank.nii.gz: channel 'image' is blank") as caught:
        on_voxels(check_voxels, load_case(blank, check=False))
    assert caught.value.problem.startswith("channel 'image' is blank")


def test_a_worker_whose_caller_stopped_listening_exits_quietly():
    """A caller killed mid-call (the selftest's kill -9 trials) leaves its worker writing into a closed pipe: the
    worker returns instead of printing a BrokenPipeError traceback on the terminal it shares."""
    import multiprocessing
    import os
    import pickle
    import sys

    from macro.tools.worker import _serve, check_voxels

    caller, worker = multiprocessing.Pipe()
    setting = {
        "tool": "check_voxels",
        "env": {k: v for k, v in os.environ.items() if k.startswith("MACRO_")},
        "path": list(sys.path),
        "threads": None,
    }
    request = {"function": check_voxels, "case": load_case(SCAN, check=False)}
    caller.send_bytes(pickle.dumps((setting, pickle.dumps(request))))
    caller.close()
    _serve(worker)
