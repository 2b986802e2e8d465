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


def test_runs_gc_frees_old_runs_then_the_oldest_until_the_quota_and_stale_temporaries(tmp_path, monkeypatch):
    import json
    import os
    import time

    import numpy as np
    from typer.testing import CliRunner

    from macro.artifacts import ArtifactStore
    from macro.cli import app
    from macro.config import Home

    monkeypatch.setenv("MACRO_HOME", str(tmp_path / "home"))
    root = Home.current().ensure().artifacts
    now = time.time()
    ages = {"old": 10, "middle": 2, "new": 0}  # days
    for name, days in ages.items():
        art = ArtifactStore(root, f"run-{name}").save_png(np.zeros((64, 64, 3)), "image", name)
        for f in art.path.parent.iterdir():
            os.utime(f, (now - days * 86400, now - days * 86400))
    stale = root / "run-new" / ".x.png.abc.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (now - 7200, now - 7200))
    fresh = root / "run-new" / ".y.png.def.tmp"
    fresh.write_bytes(b"still writing")
    dry = CliRunner().invoke(app, ["runs", "gc", "--older-than", "5", "--dry-run", "--json"])
    assert json.loads(dry.stdout)["runs_removed"] == 1 and (root / "run-old").exists()
    done = json.loads(CliRunner().invoke(app, ["runs", "gc", "--older-than", "5", "--json"]).stdout)
    assert done["runs_removed"] == 1 and done["tmp_removed"] == 1 and done["runs_kept"] == 2
    assert not (root / "run-old").exists() and not stale.exists() and fresh.exists()
    newest = sum(f.stat().st_size for f in (root / "run-new").rglob("*") if f.is_file())
    limit = str((newest + 1) / 2**30)
    quota = json.loads(CliRunner().invoke(app, ["runs", "gc", "--max-gb", limit, "--json"]).stdout)
    assert quota["runs_removed"] == 1 and not (root / "run-middle").exists() and (root / "run-new").exists()
    assert CliRunner().invoke(app, ["runs", "gc", "--older-than", "-1"]).exit_code == 2
