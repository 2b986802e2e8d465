"""The image memory store: exact retrieval, filters, persistence, several writers, kills mid-write, damage, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from macro.errors import CaseError
from macro.memory.encoder import ENCODER_ID
from macro.memory.index import KINDS
from macro.memory.store import FILE, ImageMemory, MemoryHit

ROOT = Path(__file__).resolve().parents[1]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _filled(path: Path, kind: str, n: int = 400, dim: int = 32) -> tuple[ImageMemory, np.ndarray, list[str]]:
    vectors = _unit(np.random.default_rng(0), n, dim)
    metas = [
        {
            "i": i,
            "family": "classify" if i % 100 == 7 else "segment",
            "verification": "failed" if i % 3 == 0 else "verified",
        }
        for i in range(n)
    ]
    memory = ImageMemory(path, kind=kind)
    return memory, vectors, memory.add_many(vectors, metas)


@pytest.mark.parametrize("kind", KINDS)
def test_each_entry_retrieves_itself_first_and_flat_matches_brute_force(tmp_path, kind):
    memory, vectors, ids = _filled(tmp_path / kind, kind)
    for i in range(0, 400, 23):
        hits = memory.query(vectors[i] + 0.01, k=5)
        assert hits[0].id == ids[i]
        assert hits[0].meta["i"] == i
        assert hits[0].score > 0.99
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        if kind == "flat":
            truth = np.argsort(-(vectors @ (vectors[i] + 0.01)))[:5]
            assert [h.meta["i"] for h in hits] == truth.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_where_filter_still_returns_k_hits_when_most_entries_are_filtered_out(tmp_path, kind):
    memory, vectors, _ = _filled(tmp_path / kind, kind)
    rare = [i for i in range(400) if i % 100 == 7]  # 4 of 400 entries are "classify"
    hits = memory.query(vectors[0], k=5, floor=-1.0, where={"family": "classify"})
    assert sorted(h.meta["i"] for h in hits) == rare
    hits = memory.query(vectors[0], k=10, floor=-1.0, where={"family": "segment", "verification": "verified"})
    assert len(hits) == 10
    assert all((h.meta["family"] == "segment" and h.meta["verification"] == "verified" for h in hits))
    assert memory.query(vectors[0], k=5, where={"family": "nonexistent"}) == []


def test_floor_keeps_only_similar_entries(tmp_path):
    memory, vectors, ids = _filled(tmp_path, "flat")
    hits = memory.query(vectors[5], k=50, floor=0.5)
    scores = vectors @ vectors[5]
    assert [h.id for h in hits] == [ids[i] for i in np.argsort(-scores) if scores[i] >= 0.5]
    assert memory.query(-vectors[5], k=5, floor=0.99) == []


def test_round_trip_remove_and_kind_conversion(tmp_path):
    memory, vectors, ids = _filled(tmp_path, "flat", n=50)
    reopened = ImageMemory(tmp_path)
    assert reopened.stats()["entries"] == 50
    assert reopened.stats()["version"] == 1
    assert reopened.stats()["dim"] == 32
    assert reopened.stats()["families"] == {"segment": 49, "classify": 1}
    hit = reopened.query(vectors[9], k=1)[0]
    assert hit == MemoryHit(
        ids[9], pytest.approx(1.0, abs=1e-5), {"i": 9, "family": "segment", "verification": "failed"}
    )
    assert reopened.remove(ids[:10] + ["mem-unknown"]) == 10
    assert reopened.remove(["mem-unknown"]) == 0
    assert len(memory) == 40  # the first handle sees the other's write
    assert memory.stats()["version"] == 2
    assert memory.query(vectors[9], k=1)[0].id != ids[9]
    ImageMemory(tmp_path, kind="hnsw").add(vectors[0], {"i": 0})
    converted = ImageMemory(tmp_path)
    assert converted.stats()["kind"] == "hnsw"
    assert len(converted) == 41
    assert converted.query(vectors[0], k=1)[0].meta == {"i": 0}


def test_bad_inputs_fail_before_anything_is_written(tmp_path):
    memory, vectors, _ = _filled(tmp_path, "flat", n=5)
    with pytest.raises(ValueError, match="holds 32"):
        memory.add(np.ones(8), {})
    with pytest.raises(ValueError, match="non-zero"):
        memory.add(np.zeros(32), {})
    with pytest.raises(TypeError):
        memory.add(vectors[0], {"bad": object()})
    with pytest.raises(ValueError, match="unknown index kind"):
        ImageMemory(tmp_path, kind="lsh")
    assert memory.stats()["entries"] == 5
    assert memory.stats()["version"] == 1


def _python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True, **kwargs
    )


def test_concurrent_writers_lose_no_entries(tmp_path):
    writer = """
        import json, sys
        import numpy as np
        from macro.memory.store import ImageMemory
        memory, w = ImageMemory(sys.argv[1]), int(sys.argv[2])
        rng = np.random.default_rng(w)
        print(json.dumps([memory.add(rng.standard_normal(16), {"writer": w, "i": i}) for i in range(12)]))
    """
    procs = [
        _python(writer.replace("sys.argv[1]", repr(str(tmp_path))).replace("sys.argv[2]", str(w))) for w in range(3)
    ]
    ids = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    memory = ImageMemory(tmp_path)
    stats = memory.stats()
    assert stats["entries"] == 36
    assert stats["version"] == 36
    stored = {hit.id: hit.meta for hit in memory.query(np.ones(16), k=36, floor=-1.0)}
    assert set(stored) == {i for batch in ids for i in batch}
    assert sorted((m["writer"], m["i"]) for m in stored.values()) == [(w, i) for w in range(3) for i in range(12)]


def test_sigkill_during_a_write_leaves_the_previous_version_loadable(tmp_path):
    memory, vectors, ids = _filled(tmp_path, "flat", n=3, dim=128)
    big_write = f"""
        import numpy as np
        from macro.memory.store import ImageMemory
        n = 250_000  # 128 MB of vectors to write
        vectors = np.random.default_rng(1).standard_normal((n, 128), dtype=np.float32)
        ImageMemory({str(tmp_path)!r}).add_many(vectors, [{{"i": i}} for i in range(n)])
        print("finished")
    """
    proc = _python(big_write)
    deadline, temporary = time.monotonic() + 120, []
    while not temporary and proc.poll() is None and time.monotonic() < deadline:
        temporary = list(tmp_path.glob(f".{FILE}.*.tmp"))
        time.sleep(0.001)
    assert temporary, "the writer ended before its temporary file appeared"
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert "finished" not in out
    survivor = ImageMemory(tmp_path)
    assert survivor.stats()["entries"] == 3
    assert survivor.stats()["version"] == 1
    assert survivor.stats()["dim"] == 128
    assert survivor.query(vectors[2], k=1)[0].id == ids[2]
    survivor.add(vectors[0], {"i": "after"})  # the next writer holds the lock and clears the dead writer's file
    assert not list(tmp_path.glob(f".{FILE}.*.tmp"))
    assert len(ImageMemory(tmp_path)) == 4


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"NOTAMEM!" + b[8:], "bad magic"),
        (lambda b: b[: len(b) - 100], "truncated"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "sha256"),
        (lambda b: b[:4], "truncated"),
    ],
)
def test_a_damaged_file_raises_case_error_naming_it(tmp_path, damage, message):
    _filled(tmp_path, "hnsw", n=20)
    path = tmp_path / FILE
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CaseError, match=message) as err:
        ImageMemory(tmp_path).stats()
    assert err.value.path == str(path)


def test_vectors_from_another_encoder_are_refused(tmp_path):
    vector = _unit(np.random.default_rng(0), 1, 8)[0]
    ImageMemory(tmp_path, encoder="encoder-a").add(vector, {"case_id": "a"})
    other = ImageMemory(tmp_path, encoder="encoder-b")
    with pytest.raises(CaseError, match="encoder-a") as caught:
        other.add(vector, {"case_id": "b"})
    assert "encoder-b" in str(caught.value)
    with pytest.raises(CaseError, match="not comparable"):
        other.query(vector)
    assert len(ImageMemory(tmp_path, encoder="encoder-a")) == 1, "nothing was written"


def test_cli_stats_and_query_on_a_small_memory(home, demo, demo_folder, tmp_path, one_thread):
    from PIL import Image

    from macro.case import load_case
    from macro.cli import app
    from macro.config import Home
    from macro.memory.encoder import case_embedding

    picture = tmp_path / "skin.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(picture)
    memory = ImageMemory(Home.current().memory)
    memory.add(
        case_embedding(demo),
        {
            "case_id": demo.id,
            "family": "segment",
            "verification": "verified",
            "tools": [{"name": "segment_tumour", "args": {}}],
        },
    )
    memory.add(
        case_embedding(load_case(picture)),
        {"case_id": "skin", "family": "classify", "verification": "failed", "tools": []},
    )
    runner = CliRunner()
    stats = runner.invoke(app, ["memory", "stats", "--json"])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.output) | {"path": None} == {
        "path": None,
        "entries": 2,
        "dim": 320,
        "kind": "flat",
        "encoder": ENCODER_ID,
        "version": 2,
        "bytes": (home / "memory" / FILE).stat().st_size,
        "families": {"segment": 1, "classify": 1},
        "verification": {"verified": 1, "failed": 1},
    }
    query = runner.invoke(app, ["memory", "query", str(demo_folder), "--k", "2", "--json"])
    assert query.exit_code == 0, query.output
    hits = json.loads(query.output)
    assert [h["meta"]["case_id"] for h in hits] == [demo.id, "skin"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=0.0001)
    only = json.loads(
        runner.invoke(app, ["memory", "query", str(demo_folder), "--family", "classify", "--json"]).output
    )
    assert [h["meta"]["case_id"] for h in only] == ["skin"]
    (home / "memory" / FILE).write_bytes(b"garbage")
    broken = runner.invoke(app, ["memory", "stats"])
    assert broken.exit_code == 2
    assert "memory.bin" in broken.output


def test_benchmark_command_reports_latency_and_recall():
    from macro.cli import app

    result = CliRunner().invoke(
        app, ["eval", "memory", "--sizes", "300", "--large", "3000", "--queries", "20", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    flat = report["flat"][0]
    assert flat["entries"] == 300
    assert 0 < flat["query_ms"]["p50"] <= flat["query_ms"]["p95"]
    for kind in ("ivf", "hnsw"):
        sweep = report["large"][kind]["sweep"]
        assert sum((row["default"] for row in sweep)) == 1
        assert all((0.0 <= row["recall_at_5"] <= 1.0 for row in sweep))
        assert max(row["recall_at_5"] for row in sweep) > 0.9


def test_replacing_and_removing_by_metadata(tmp_path):
    memory = ImageMemory(tmp_path / "mem")
    rng = np.random.default_rng(0)
    first = memory.add(rng.normal(size=8), {"trajectory_id": "t1"})
    memory.add(rng.normal(size=8), {"trajectory_id": "t2"})
    again = memory.add(rng.normal(size=8), {"trajectory_id": "t1", "n": 2}, replacing={"trajectory_id": "t1"})
    assert len(memory) == 2 and again != first
    hits = memory.query(rng.normal(size=8), k=5, floor=-1, where={"trajectory_id": "t1"})
    assert [h.meta.get("n") for h in hits] == [2]
    assert memory.remove(where={"trajectory_id": "t1"}) == 1 and len(memory) == 1
    assert memory.remove(where={"trajectory_id": "nope"}) == 0
