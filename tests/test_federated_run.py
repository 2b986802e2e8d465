"""Federated classifiers end to end on small federations: build, train, calibrate, unlearn with an audit trail,
the classification tools, and a slice of ``macro eval federated``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from macro.errors import CaseError


@pytest.fixture(scope="module")
def derm_fed(tmp_path_factory):
    from macro.federated.tasks import federation

    return federation("derm", tmp_path_factory.mktemp("data"), "labelset", n_images=150, seed=3, n_strong=1)


def test_labelset_federation_erases_what_a_site_does_not_label(derm_fed):
    fed = derm_fed
    assert len(fed.clients) == 5
    assert fed.classes[:2] == ("MEL", "NV")
    assert not fed.multi_label
    all_rows = np.concatenate(list(fed.client_images.values()))
    assert len(set(all_rows.tolist())) == len(all_rows)  # every training image sits at exactly one site
    for k, data in fed.clients.items():
        outside = [c for c in range(len(fed.classes)) if c not in fed.label_sets[k]]
        assert 2 <= len(fed.label_sets[k]) <= 3
        assert data.label_mask[outside].sum() == 0
        assert data.labels[:, outside].sum() == 0
        assert data.weak(np.arange(4)).shape == (4, 320, 3, 3)
    assert np.array_equal(
        fed.test.weak(np.arange(5)).numpy(), fed.test.weak(np.arange(5)).numpy()
    )  # held-out view is fixed


def test_unknown_task_and_bad_split_are_clear_errors(tmp_path):
    from macro.federated.tasks import federation

    with pytest.raises(CaseError, match="unknown task"):
        federation("mri", tmp_path)
    with pytest.raises(CaseError, match="single-label"):
        federation("cxr", tmp_path, "dirichlet", n_images=100)


@pytest.mark.slow
def test_train_then_unlearn_writes_weights_manifest_and_audit(tmp_path, home):
    from macro.federated.fcu import FCUConfig
    from macro.federated.run import check_audit, train_task, unlearn_task
    from macro.tools.classification.model import SLOTS, load_classifier

    out = tmp_path / "derm"
    manifest = train_task("derm", tmp_path / "data", out, rounds=2, n_images=150, seed=3, progress=False)
    model, loaded = load_classifier("derm", out)
    assert loaded["sha256"] == manifest["sha256"]
    assert loaded["dtype"] == "float16"
    assert 0.05 <= loaded["temperature"] <= 20
    assert loaded["federation"]["n_clients"] == 5
    assert loaded["held_out"]["test"]["auc"] > 50
    cfg = FCUConfig(iterations=10, fusion_interval=5, lr=1e-4, post_rounds=1, post_iters=2, post_lr=1e-3)
    record = unlearn_task(
        "derm", 2, tmp_path / "data", weights=out, requested_by="dpo@hospital", cfg=cfg, progress=False
    )
    written = SLOTS["derm"].home_dir()
    assert SLOTS["derm"].active() == written, "the unlearnt model is the home copy, which the tools now use"
    after = json.loads((written / "manifest.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["sha256"] == manifest["sha256"], "the source is untouched"
    assert after["unlearned_clients"] == [2]
    assert after["previous_sha256"] == manifest["sha256"]
    assert after["sha256"] != manifest["sha256"]
    assert record["model_before"] == manifest["sha256"]
    assert record["model_after"] == after["sha256"]
    assert record["requested_by"] == "dpo@hospital"
    assert set(record["metrics_before"]) == {"forgotten", "others", "test"}
    lines = [json.loads(line) for line in open(record["audit_log"])]
    assert lines[-1]["client"] == 2
    assert lines[-1]["model_after"] == after["sha256"]
    assert check_audit(Path(record["audit_log"]))["ok"]
    with pytest.raises(CaseError, match="already unlearned"):
        unlearn_task("derm", 2, tmp_path / "data", cfg=cfg, progress=False)
    with pytest.raises(CaseError, match="client must be"):
        unlearn_task("derm", 9, tmp_path / "data", cfg=cfg, progress=False)


@pytest.mark.slow
def test_eval_slice_keeps_the_shape_and_the_direction_of_the_full_run(tmp_path):
    """A small slice of ``macro eval federated`` (the full run is in the README): the documented JSON shape, FedLSM
    not behind FedAvg, and FCU forgetting more than it was trained to remember, faster than retraining."""
    from macro.eval.federated import evaluate, markdown

    p = {"cxr_images": 600, "cxr_rounds": 4, "derm_images": 600, "fl_rounds": 6, "fl_iters": 10, "post_rounds": 1}
    report = evaluate(tmp_path, seeds=(0,), log=lambda *_: None, p=p)
    cls, unl = report["classification"], report["unlearning"]
    assert set(cls) == {"fedavg", "fedavg_labelled", "fedlsm"}
    assert all((0 <= r["mean_auc"] <= 100 for r in cls.values()))
    assert {"fcu", "retrain", "finetune", "gradient_ascent"} <= set(unl)
    assert all({"forgotten_acc", "others_acc", "test_auc", "seconds"} <= set(r) for r in unl.values())
    assert cls["fedlsm"]["mean_auc"] >= cls["fedavg"]["mean_auc"] - 1
    assert unl["fcu"]["forgotten_acc"] < unl["original"]["forgotten_acc"]
    assert unl["fcu"]["test_auc"] >= unl["retrain"]["test_auc"] - 5
    assert unl["fcu"]["seconds"] < unl["retrain"]["seconds"]
    assert report["provenance"]["seeds"] == [0] and report["provenance"]["torch_threads"] == 2
    gap = report["differences"]["fcu - retrain: forgotten acc"]
    assert gap["mean"] == pytest.approx(unl["fcu"]["forgotten_acc"] - unl["retrain"]["forgotten_acc"])
    assert set(report["fcu_claim"]) >= {"forgotten_acc_within_3", "test_auc_within_2", "speedup_at_least_10", "holds"}
    table = markdown(report)
    assert "fedlsm" in table and "n/a (1 seed)" in table and "FCU claim" in table


@pytest.mark.slow
def test_quick_run_gives_the_same_figures_whatever_omp_num_threads(tmp_path):
    """The documented tolerance is zero: the run fixes its torch threads, so the environment cannot move a figure
    (times aside)."""
    import os
    import subprocess
    import sys

    figures = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MACRO_HOME": str(tmp_path / "home")}
        command = [sys.executable, "-m", "macro.cli", "eval", "federated", "--quick", "--json"]
        done = subprocess.run(
            [*command, "--out", str(tmp_path / threads)], env=env, capture_output=True, text=True, timeout=1800
        )
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout)
        assert report["provenance"]["omp_num_threads"] == threads and report["provenance"]["torch_threads"] == 2
        timed = ("seconds", "speedup_vs_retrain")
        figures.append({k: v["mean"] for k, v in report["over_seeds"].items() if not k.endswith(timed)})
    assert figures[0] == figures[1]


def test_the_audit_log_is_a_hash_chain_that_shows_edits_removals_and_reordering(tmp_path, home):
    from typer.testing import CliRunner

    from macro.cli import app
    from macro.federated.run import append_audit, audit_path, check_audit

    for client in range(3):
        append_audit({"event": "client-unlearning", "client": client, "model_after": f"sha-{client}"})
    assert check_audit() == {"path": str(audit_path()), "entries": 3, "ok": True, "problems": []}
    assert CliRunner().invoke(app, ["fl", "audit"]).exit_code == 0
    lines = audit_path().read_text().splitlines()
    tampered = {
        "edited": [lines[0], lines[1].replace('"client": 1', '"client": 4'), lines[2]],
        "removed": [lines[0], lines[2]],
        "reordered": [lines[1], lines[0], lines[2]],
    }
    for how, kept in tampered.items():
        audit_path().write_text("\n".join(kept) + "\n")
        report = check_audit()
        assert not report["ok"], how
        result = CliRunner().invoke(app, ["fl", "audit"])
        assert result.exit_code == 2 and "BROKEN" in result.stdout


def test_an_audit_failure_leaves_the_old_model_in_use(tmp_path):
    import torch

    from macro import weights

    folder = tmp_path / "model"
    first = weights.save_tensors(folder, {"w.safetensors": {"w": torch.zeros(2)}}, {"command": "x"})

    def refuse(staged):
        assert staged["sha256"] != first["sha256"]
        raise OSError("audit log not writable")

    with pytest.raises(OSError):
        weights.save_tensors(folder, {"w.safetensors": {"w": torch.ones(2)}}, {"command": "x"}, before_commit=refuse)
    assert weights.verify(folder, "x")["sha256"] == first["sha256"]
