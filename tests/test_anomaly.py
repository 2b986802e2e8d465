"""CADIC anomaly detection: the k-center rule, the fixed-size shared bank, crash-safe saving, the MVTec reader,
the phantom stream, an evaluation slice and the score_anomaly tool through the agent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from macro.data import make
from macro.errors import CaseError
from macro.tools.anomaly.continual import Coreset, cadic_update, default_projection, fifo_update, thin
from macro.tools.anomaly.coreset import covering_radius, greedy_kcenter

TINY = {"n": 16, "n_test": 8, "tasks": 3}
TINY_TASKS = ("brain-axial", "ct-head", "mr-abdomen")


def _clustered(rng: np.random.Generator, n_clusters: int, per: int, dim: int = 16, shift: float = 0.0) -> torch.Tensor:
    centres = rng.normal(shift, 10.0, (n_clusters, dim))
    return torch.as_tensor(
        np.repeat(centres, per, 0) + rng.normal(0, 1.0, (n_clusters * per, dim)), dtype=torch.float32
    )


def test_kcenter_is_seeded_distinct_and_covers_better_than_the_first_points():
    points = _clustered(np.random.default_rng(0), 12, 40)
    a, b = greedy_kcenter(points, 24, seed=3), greedy_kcenter(points, 24, seed=3)
    assert np.array_equal(a, b)
    assert len(set(a.tolist())) == 24
    assert not np.array_equal(a, greedy_kcenter(points, 24, seed=4))
    assert covering_radius(points, points[a]) < 0.5 * covering_radius(points, points[:24])
    seeded = greedy_kcenter(points, 24, selected=np.array([5, 7]))
    assert seeded[:2].tolist() == [5, 7]
    assert np.array_equal(greedy_kcenter(points, 10_000), np.arange(len(points)))


def test_large_bank_scores_through_ivf_with_exact_image_scores():
    from macro.tools.anomaly.scoring import IVF_MIN, NearestNeighbours, score

    rng = np.random.default_rng(2)
    bank = torch.as_tensor(rng.normal(size=(IVF_MIN + 1000, 16)), dtype=torch.float32)  # no clusters: IVF misses often
    index = NearestNeighbours(bank)
    assert index.ivf is not None
    assert index.ivf.nprobe < index.ivf.nlist
    queries = torch.as_tensor(rng.normal(size=(10, 20, 16)), dtype=torch.float32)
    queries[3, 7] += 5.0  # one far-off patch: the image's score must be its exact distance
    got = score(index, queries, batch=4)
    exact, exact_idx = index.search(queries.reshape(-1, 16))
    exact, exact_idx = exact.reshape(10, 20), exact_idx.reshape(10, 20)
    assert (
        index.upper_bounds(queries.reshape(-1, 16))[0].reshape(10, 20).max(1) > exact.max(1) + 1e-4
    ).any()  # refining matters
    assert np.allclose(got.image, exact.max(1), rtol=1e-5)
    assert (got.patches >= exact - 1e-4).all()
    worst = exact.argmax(1)
    assert np.array_equal(got.nearest[np.arange(10), worst], exact_idx[np.arange(10), worst])
    small = NearestNeighbours(bank[:100])
    assert small.ivf is None
    assert np.allclose(score(small, queries).patches, small.search(queries.reshape(-1, 16))[0].reshape(10, 20))


def test_shared_bank_keeps_its_size_and_every_task_while_fifo_forgets():
    rng = np.random.default_rng(1)
    proj = default_projection(16, seed=0)
    tasks = [
        Coreset.from_features(_clustered(rng, 6, 60, shift=40.0 * t).reshape(36, 10, 16), np.arange(36) + 36 * t)
        for t in range(4)
    ]
    candidates = [thin(task, proj) for task in tasks]
    capacity = len(candidates[0])
    cadic = fifo = None
    for cand in candidates:
        cadic = cadic_update(cadic, cand, capacity, proj)
        fifo = fifo_update(fifo, cand, capacity)
        assert len(cadic) == capacity
        assert len(fifo) == capacity
    assert set(np.unique(cadic.owner // 36)) == {0, 1, 2, 3}
    assert set(np.unique(fifo.owner // 36)) == {3}
    everything = torch.cat([c.vectors for c in candidates])
    assert covering_radius(everything, cadic.vectors) <= covering_radius(everything, fifo.vectors)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    from macro.data import make

    root = tmp_path_factory.mktemp("anomaly-stream")
    make("anomaly-stream", root, n=TINY["n"], n_test=TINY["n_test"], only=TINY_TASKS, seed=0)
    return root


def test_stream_is_deterministic_with_masks_and_modalities(stream, tmp_path):
    from macro.data import make
    from macro.data.anomaly import KINDS, stream_tasks
    from macro.data.mvtec import load_masks, read_task

    again = make("anomaly-stream", tmp_path / "again", n=TINY["n"], n_test=TINY["n_test"], tasks=1, seed=0)[0]
    first = stream_tasks(stream)[0]
    for path in sorted(again.rglob("*.png")):
        assert path.read_bytes() == (first / path.relative_to(again)).read_bytes(), path
    tasks = [read_task(f) for f in stream_tasks(stream)]
    assert [t.name for t in tasks] == list(TINY_TASKS)
    for task in tasks:
        assert task.modality == ("ct" if task.name == "ct-head" else "mr")
        assert len(task.train) == TINY["n"]
        assert sorted(set(task.kinds)) == sorted({"good", *KINDS})
        masks = load_masks(task)
        anomalous = task.labels == 1
        assert anomalous.sum() == TINY["n_test"]
        assert not masks[~anomalous].any()
        assert all(m.sum() > 50 for m in masks[anomalous])
        assert set(np.unique(np.asarray(Image.open(task.masks[int(np.argmax(anomalous))])))) <= {0, 255}


def _png(path, size=(40, 32), value=120, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


def test_mvtec_layout_reader_and_its_errors(tmp_path):
    from macro.data.mvtec import load_images, load_masks, read_task

    task_dir = tmp_path / "bottle"
    for i in range(5):
        _png(task_dir / "train" / "good" / f"{i:03d}.png", value=100 + i)
    _png(task_dir / "test" / "good" / "000.png")
    _png(task_dir / "test" / "broken_large" / "000.png")
    _png(task_dir / "test" / "broken_large" / "001.png")
    mask = np.zeros((32, 40), dtype=np.uint8)
    mask[4:10, 6:12] = 255
    for stem in ("000", "001"):
        (task_dir / "ground_truth" / "broken_large").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(task_dir / "ground_truth" / "broken_large" / f"{stem}_mask.png")
    task = read_task(task_dir)
    assert task.name == "bottle"
    assert task.modality == "other"
    assert len(task.train) == 5
    assert task.kinds == ("broken_large", "broken_large", "good")
    assert task.labels.tolist() == [1, 1, 0]
    bank_part, held = task.calibration_split()
    assert len(held) == 2
    assert bank_part + held == task.train
    assert load_images(task.train[:2], size=56).shape == (2, 3, 56, 56)
    masks = load_masks(task, size=56)
    assert masks[0].any()
    assert masks[1].any()
    assert not masks[2].any()

    (task_dir / "ground_truth" / "broken_large" / "001_mask.png").unlink()
    with pytest.raises(CaseError, match="001_mask.png"):
        read_task(task_dir)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(task_dir / "ground_truth" / "broken_large" / "001_mask.png")
    with pytest.raises(CaseError, match="mask size"):
        load_masks(read_task(task_dir))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseError, match="train/good"):
        read_task(tmp_path / "empty")
    (task_dir / "train" / "good" / "004.png").write_bytes(b"not a png")
    with pytest.raises(CaseError, match="004.png"):
        load_images(read_task(task_dir).train)


@pytest.fixture(scope="module")
def learnt(stream, tmp_path_factory):
    from macro.data.anomaly import stream_tasks
    from macro.tools.anomaly.learn import empty_bank, learn

    bank, _ = learn(empty_bank(), stream_tasks(stream), command="test")
    return bank


def test_learnt_bank_is_fixed_size_calibrated_and_reloads(learnt, stream, tmp_path):
    from dataclasses import replace

    from macro.data.anomaly import stream_tasks
    from macro.data.mvtec import read_task
    from macro.tools.anomaly.bank import load_bank, save_bank
    from macro.tools.anomaly.continual import RATIO
    from macro.tools.anomaly.features import GRID
    from macro.tools.anomaly.learn import empty_bank, learn_task

    assert [t["name"] for t in learnt.tasks] == list(TINY_TASKS)
    assert len(learnt.coreset) == learnt.capacity == learnt.tasks[0]["candidates"]
    patches = learnt.tasks[0]["bank_images"] * GRID * GRID
    assert learnt.tasks[0]["candidates"] == round(RATIO * patches)
    built_at_ten = replace(empty_bank(), info={**empty_bank().info, "ratio": 0.1})  # a bank keeps its own ratio
    assert learn_task(built_at_ten, read_task(stream_tasks(stream)[0])).tasks[0]["candidates"] == round(0.1 * patches)
    assert np.isfinite(learnt.threshold)
    assert len(learnt.calibration_task) == 3 * 2
    assert set(np.unique(learnt.ref_task[learnt.coreset.owner])) == {0, 1, 2}
    manifest = save_bank(learnt, tmp_path)
    written = manifest["files"]["bank.npz"]
    assert hashlib.sha256((tmp_path / written["file"]).read_bytes()).hexdigest() == manifest["sha256"]
    again = load_bank(tmp_path)
    assert torch.equal(again.coreset.vectors, learnt.coreset.vectors)
    assert again.refs == learnt.refs
    assert again.threshold == pytest.approx(learnt.threshold, abs=1e-3)
    assert set(manifest["held_out"]) == set(TINY_TASKS)


def test_a_crash_while_saving_leaves_the_previous_bank_loadable(learnt, tmp_path, monkeypatch):
    from dataclasses import replace

    from macro import weights as weights_module
    from macro.tools.anomaly import bank as bank_module

    before = bank_module.save_bank(learnt, tmp_path)
    changed = replace(learnt, threshold=learnt.threshold + 1.0, coreset=learnt.coreset.take(np.arange(10)))
    real_write = weights_module.atomic_write_bytes

    def crash_on(target):
        def write(path, payload):
            if path.name.endswith(target):
                raise KeyboardInterrupt("killed")
            real_write(path, payload)

        return write

    for target in (".npz", "manifest.json"):  # killed while writing the vectors, then between vectors and manifest
        monkeypatch.setattr(weights_module, "atomic_write_bytes", crash_on(target))
        with pytest.raises(KeyboardInterrupt):
            bank_module.save_bank(changed, tmp_path)
        loaded = bank_module.load_bank(tmp_path)
        assert len(loaded.coreset) == len(learnt.coreset), f"killed while writing {target}"
        assert json.loads((tmp_path / "manifest.json").read_text())["sha256"] == before["sha256"]
    monkeypatch.setattr(weights_module, "atomic_write_bytes", real_write)
    after = bank_module.save_bank(changed, tmp_path)
    assert len(bank_module.load_bank(tmp_path).coreset) == 10
    assert len(list(tmp_path.glob("bank-*.npz"))) == 1, "the previous bank file is removed once replaced"
    (tmp_path / after["files"]["bank.npz"]["file"]).write_bytes(b"tampered")
    with pytest.raises(CaseError, match="sha256"):
        bank_module.load_bank(tmp_path)


@pytest.mark.slow
def test_eval_slice_cadic_beats_fifo_and_stays_near_per_task_patchcore(stream, tmp_path, one_thread):
    from macro.eval.anomaly import evaluate, markdown, write_report

    report = evaluate(tmp_path, source=stream, p=TINY, log=lambda *_: None)
    m = report["methods"]
    assert report["tasks"] == list(TINY_TASKS)
    assert set(m) == {"cadic", "patchcore_per_task", "fifo", "joint"}
    assert m["cadic"]["mean_auroc"] >= m["fifo"]["mean_auroc"] + 5
    assert m["cadic"]["mean_auroc"] >= m["patchcore_per_task"]["mean_auroc"] - 10
    assert m["cadic"]["bank_mb"] <= m["patchcore_per_task"]["bank_mb"] / 3 + 1e-3
    assert all((0 <= a <= 100 for r in m.values() for a in r["auroc_per_task"]))
    assert m["fifo"]["forgetting"] > m["cadic"]["forgetting"]
    files = write_report(report, tmp_path / "report")
    assert all((f.is_file() for f in files))
    assert report["differences"]["cadic - fifo: mean AUROC"]["mean"] == pytest.approx(
        m["cadic"]["mean_auroc"] - m["fifo"]["mean_auroc"]
    )
    assert report["provenance"]["torch_threads"] == 1
    assert "cadic" in markdown(report)


@pytest.mark.slow
def test_tool_through_the_agent_flags_an_anomaly_with_a_heatmap(stream, learnt, home, one_thread):
    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.case import load_case
    from macro.config import Home
    from macro.data.anomaly import stream_tasks
    from macro.tools.anomaly.bank import save_bank
    from macro.tools.base import ToolContext
    from macro.tools.registry import Registry

    save_bank(learnt, Home.current().models / "anomaly")
    task = stream_tasks(stream)[0]
    anomalous = sorted((task / "test" / "cutpaste").glob("*.png"))[0]
    result = Agent(ScriptedPolicy(), "scripted", home=Home(home)).ask(
        load_case(anomalous), "Is anything anomalous in this image?"
    )
    (step,) = result.trajectory.steps
    data = step["data"]
    assert step["tool"] == "score_anomaly"
    assert step["ok"]
    assert data["threshold"] == pytest.approx(learnt.threshold, abs=0.001)
    assert data["reference"].startswith("brain-axial/")
    assert "threshold" in result.answer
    tool = Registry.default().get("score_anomaly")
    normal = tool.execute(
        ToolContext.for_case(load_case(task / "train" / "good" / "00000.png"), home / "artifacts"), tool.args_schema()
    )
    assert data["score"] > normal.data["score"]
    assert normal.data["nearest_task"] == "brain-axial"
    heatmap = Image.open(normal.artifacts[0]["path"])
    assert heatmap.size == (672, 224)
    assert normal.artifacts[0]["kind"] == "heatmap"


# ---------------------------------------------------------------- the shipped bank on real scans


def _score(path, store: Path):
    """The shipped tool's structured result for a file, or None when the tool is not offered for it."""
    from macro.artifacts import ArtifactStore
    from macro.case import load_case
    from macro.tools.base import ToolContext
    from macro.tools.registry import Registry

    tool = Registry.default().get("score_anomaly")
    case = load_case(path)
    if not tool.offered(case):
        return None
    return tool.execute(ToolContext(case=case, store=ArtifactStore(store)), tool.args_schema()).data


@pytest.mark.parametrize(
    ("name", "task"),
    [("CT_small.dcm", "ct-thorax"), ("J2K_pixelrep_mismatch.dcm", "ct-head"), ("examples_overlay.dcm", "mr-abdomen")],
)
def test_the_bank_calls_its_own_real_source_scans_normal(name, task, tmp_path):
    data = _score(get_testdata_file(name), tmp_path)
    assert data["verdict"] == "normal", data
    assert data["nearest_task"] == task
    assert data["score"] < data["threshold"]
    assert data["support"] > 0.95


def test_held_out_normals_of_the_learnt_tasks_mostly_score_normal(tmp_path):
    """Held-out normals made from the same files; the threshold is their 95th percentile, so a few may exceed it."""
    folders = make("anomaly-stream", tmp_path / "held", n=2, n_test=6, seed=11)
    verdicts = [_score(p, tmp_path)["verdict"] for f in folders for p in sorted((f / "test" / "good").glob("*.png"))]
    assert "outside" not in verdicts
    assert verdicts.count("normal") >= 0.85 * len(verdicts), verdicts


def test_images_unlike_every_learnt_task_are_outside_the_learnt_categories(tmp_path):
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)).save(noise)
    (tmp_path / "noise.json").write_text(json.dumps({"modality": "ct"}))
    for data in (_score(noise, tmp_path), _score(get_testdata_file("MR_small.dcm"), tmp_path)):
        assert data["verdict"] == "outside", data
        assert data["anomalous"] is False, "outside the learnt categories is no decision"
        assert data["support"] < 0.8


def test_the_tool_is_not_offered_where_the_bank_learnt_nothing_similar(tmp_path):
    lesion = make("derm-phantom", tmp_path / "derm", n=1, seed=3)[0]
    assert _score(lesion, tmp_path) is None
    assert _score(get_testdata_file("examples_rgb_color.dcm"), tmp_path) is None  # ultrasound: no learnt task


def test_a_peak_is_reported_in_the_case_own_pixels(tmp_path):
    data = _score(get_testdata_file("examples_overlay.dcm"), tmp_path)
    assert 0 <= data["peak"][0] < 300
    assert 0 <= data["peak"][1] < 484
