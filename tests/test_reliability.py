"""``macro selftest reliability`` in its bounded form: every suite runs, finds nothing, and counts what it tried."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_bounded_selftest_finds_no_crash_leak_escape_corruption_loss_or_runaway(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "macro.cli", "selftest", "reliability", "--json"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MACRO_HOME": str(tmp_path / "home")},
        timeout=900,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0, report
    assert report["form"] == "bounded"
    assert report["bad_inputs"]["tried"] >= 150 and report["bad_inputs"]["crashes"] == 0
    assert report["identifiers"]["planted"] >= 6 and report["identifiers"]["leaks"] == 0
    assert report["escapes"]["tried"] >= 8 and report["escapes"]["escaped"] == 0
    assert report["kills"]["trials"] >= 10 and report["kills"]["corrupted"] == 0
    assert report["concurrency"]["writes"] >= 100 and report["concurrency"]["lost"] == 0
    assert report["limits"]["tried"] >= 5 and report["limits"]["uncontained"] == 0
    assert "Traceback" not in done.stderr, "no process it starts, killed writers' tool workers included, prints one"


def test_a_memory_entry_never_outlives_its_verdict_when_the_writer_is_killed_between_the_writes(home, monkeypatch):
    """``bad`` after ``good``: the hint is removed before the verdict changes, so a kill between the two writes leaves
    a verified run without its hint, never a hint for a failed run (what the kill suite checks at random moments)."""
    from pathlib import Path

    import nibabel

    from macro.agent.experience import record_verdict
    from macro.case import load_case
    from macro.config import Home
    from macro.memory.store import ImageMemory
    from macro.trajectory import Trajectory, TrajectoryStore

    case = load_case(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii")
    store = TrajectoryStore(Home.current().trajectories_db)
    traj = Trajectory(
        "describe", case.id, [{"tool": "describe_scan", "args": {}, "ok": True}], "a", "p", "t", case.ref()
    )
    store.add(traj)
    record_verdict(traj.id, "verified", "test")
    assert len(ImageMemory(Home.current().memory)) == 1

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(TrajectoryStore, "verify", killed)
    with pytest.raises(Killed):
        record_verdict(traj.id, "failed", "test")
    assert len(ImageMemory(Home.current().memory)) == 0
    assert store.get(traj.id).verification == "verified"
