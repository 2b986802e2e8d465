"""The two federated classification tools with the shipped weights: manifests, gating, calibrated output that
ranks unseen phantom images well, and use through the agent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from macro import weights
from macro.case import load_case
from macro.tools.base import ToolContext
from macro.tools.classification.model import SLOTS
from macro.tools.registry import Registry

UNSEEN_SEED = 777  # the shipped models trained on seed 0 folders


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from macro.data import make

    root = tmp_path_factory.mktemp("cls")
    return {
        "derm": make("derm-phantom", root / "derm", n=40, seed=UNSEEN_SEED),
        "cxr": make("cxr-phantom", root / "cxr", n=40, seed=UNSEEN_SEED),
    }


@pytest.mark.parametrize("task", ["derm", "cxr"])
def test_shipped_weights_record_their_training(task):
    manifest = weights.verify(SLOTS[task].shipped, SLOTS[task].regenerate)
    assert manifest["command"].startswith("macro fl train")
    assert manifest["method"] == "fedlsm"
    assert manifest["held_out"]["test"]["auc"] > 70
    assert manifest["test_ece"] <= manifest["test_ece_raw"] + 0.5


def test_each_tool_is_offered_only_for_its_modality(images, demo):
    registry = Registry.default()
    derm, cxr = load_case(images["derm"][0]), load_case(images["cxr"][0])
    assert derm.modality == "dermoscopy"
    assert cxr.modality == "xray"
    offered = {
        name: {t.name for t in registry.for_case(case)} for name, case in (("derm", derm), ("cxr", cxr), ("mri", demo))
    }
    assert "classify_lesion" in offered["derm"]
    assert "classify_findings" not in offered["derm"]
    assert "classify_findings" in offered["cxr"]
    assert "classify_lesion" not in offered["cxr"]
    assert not {"classify_lesion", "classify_findings"} & offered["mri"]


@pytest.mark.parametrize("task,tool", [("derm", "classify_lesion"), ("cxr", "classify_findings")])
def test_calibrated_probabilities_rank_unseen_images(images, task, tool, home):
    from macro.federated.fedlsm import mean_auc

    registry = Registry.default()
    probs, labels = [], []
    for path in images[task]:
        ctx = ToolContext.for_case(load_case(path), home / "artifacts")
        chosen = registry.get(tool)
        data = chosen.execute(ctx, chosen.args_schema()).data
        probs.append(list(data["probabilities"].values()))
        labels.append(list(json.loads(path.with_suffix(".json").read_text())["labels"].values()))
        assert data["model_version"]["sha256"]
        assert all((0 <= p <= 1 for p in probs[-1]))
    probs, labels = np.array(probs), np.array(labels, dtype=float)
    if task == "derm":
        assert np.allclose(probs.sum(1), 1, atol=1e-3)
    auc, _ = mean_auc(probs, labels)
    assert auc > 70, auc


def test_agent_classifies_a_lesion_with_the_scripted_policy(images, home):
    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.config import Home

    result = Agent(ScriptedPolicy(), "scripted", home=Home(home)).ask(
        load_case(images["derm"][0]), "Is this mole a melanoma?"
    )
    (step,) = result.trajectory.steps
    assert step["tool"] == "classify_lesion"
    assert step["ok"]
    assert "MEL" in step["data"]["probabilities"]
    assert "MEL" in result.answer
