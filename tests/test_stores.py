"""Stores that several processes write at once: trajectories (SQLite WAL) and artifacts (atomic files)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from macro.artifacts import ArtifactStore
from macro.trajectory import Trajectory, TrajectoryStore


def _write_trajectories(path: str, worker: int, n: int) -> None:
    store = TrajectoryStore(Path(path))
    for i in range(n):
        store.add(
            Trajectory(
                question=f"q{worker}-{i}",
                case_id="case-x",
                steps=[{"tool": "describe_scan", "ok": True}],
                answer="a",
                policy_id="scripted",
                thread_id=f"t{worker}",
            )
        )


def _write_artifacts(root: str, worker: int) -> list[str]:
    store = ArtifactStore(Path(root), run_id=f"run-{worker}")
    return [store.save_png(np.full((8, 8, 3), worker, np.uint8), "render", "img").id for _ in range(5)]


def test_trajectory_store_accepts_concurrent_writers(tmp_path):
    db = tmp_path / "trajectories.sqlite"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_trajectories, args=(str(db), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = TrajectoryStore(db)
    assert store.count() == 100
    assert len(store.list(thread_id="t2")) == 25
    first = store.list(limit=1)[0]
    assert store.get(first.id).steps == [{"tool": "describe_scan", "ok": True}]


def test_artifacts_from_parallel_runs_resolve_and_leave_no_temp_files(tmp_path):
    with mp.get_context("fork").Pool(3) as pool:
        ids = [i for batch in pool.starmap(_write_artifacts, [(str(tmp_path), w) for w in range(3)]) for i in batch]
    store = ArtifactStore(tmp_path)
    assert len(set(ids)) == 15
    assert all((store.get(i).path.is_file() for i in ids))
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_writes_take_the_umask_mode_not_mkstemps_private_one(tmp_path):
    import os
    import stat

    from macro.artifacts import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "group.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "group.bin").stat().st_mode) == 0o640


def test_a_new_home_is_owner_only_unless_shared_with_the_group(tmp_path, monkeypatch):
    import stat

    from macro.config import Home

    private = Home(tmp_path / "private" / "home").ensure()
    assert stat.S_IMODE(private.root.stat().st_mode) == 0o700
    monkeypatch.setenv("MACRO_HOME_GROUP", "1")
    shared = Home(tmp_path / "shared").ensure()
    assert stat.S_IMODE(shared.root.stat().st_mode) == 0o770
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    Home(existing).ensure()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # an existing home keeps its mode
