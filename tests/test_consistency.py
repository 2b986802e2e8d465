"""Answers reconcile tools that speak about the same finding: chest classifier vs stepwise diagnosis, segmentation vs
the case's reference mask; a tool that declined takes no part."""

from __future__ import annotations

import pytest

from macro.agent.consistency import reconcile
from macro.agent.loop import compose_answer
from macro.tools.base import ToolContext
from macro.tools.executor import Step
from macro.tools.registry import Registry

CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax", "Consolidation")


def findings(distance: float = 10.0, **probs) -> Step:
    full = {c: probs.get(c, 0.1) for c in CLASSES}
    present = [c for c, p in full.items() if p >= 0.5]
    data = {"probabilities": full, "present": present, "in_distribution": True, "distance": distance, "threshold": 40}
    return Step("classify_findings", {}, True, 1.0, summary="Findings ...", data=data)


def chain(diagnosis: str | None, inside: bool = True, distance: float = 20.0) -> Step:
    data = {"diagnosis": diagnosis, "steps": [], "in_distribution": inside, "distance": distance, "threshold": 40}
    return Step("answer_stepwise", {}, True, 1.0, summary="Step 1 ...", data=data)


def test_a_supported_diagnosis_is_stated_as_agreeing():
    (line,) = reconcile([findings(Pneumothorax=0.81), chain("Pneumothorax")])
    expected = "Consistency: the stepwise diagnosis Pneumothorax is supported by the classifier (Pneumothorax 0.81)."
    assert line == expected


def test_a_diagnosis_without_its_findings_is_a_stated_disagreement_with_the_source_used():
    (line,) = reconcile([findings(Pneumothorax=0.32), chain("Pneumothorax")])
    assert "disagree" in line
    assert "Pneumothorax 0.32" in line
    assert "uses the classifier" in line  # the image is closer to the classifier's training images (0.25 vs 0.50)
    assert "0.25 of its threshold against 0.50" in line


def test_on_a_disagreement_the_tool_on_firmer_ground_is_used():
    (line,) = reconcile([findings(distance=30.0, Pneumothorax=0.32), chain("Pneumothorax", distance=8.0)])
    assert "uses the stepwise chain" in line and "0.20 of its threshold against 0.75" in line


@pytest.mark.parametrize("probs,word", [({}, "agree"), ({"Effusion": 0.7}, "disagree")])
def test_normal_chain_against_the_classifier(probs, word):
    (line,) = reconcile([findings(**probs), chain("Normal")])
    assert f"the tools {word}" in line or (word == "agree" and line.endswith("agree."))


def test_heart_failure_is_supported_by_cardiomegaly():
    (line,) = reconcile([findings(Cardiomegaly=0.66), chain("Heart failure")])
    assert "supported" in line and "Cardiomegaly 0.66" in line


@pytest.mark.parametrize("steps", [[findings(Mass=0.9)], [chain("Lung cancer")], [findings(), chain(None, False)]])
def test_nothing_to_reconcile_without_two_speaking_tools(steps):
    assert reconcile(steps) == []


def test_the_answer_carries_the_consistency_line():
    answer = compose_answer("", [findings(Pneumothorax=0.2), chain("Pneumothorax")])
    assert "Consistency: the tools disagree" in answer
    assert answer.index("Consistency") < answer.index("Findings (from tools)")


def test_segmentation_is_compared_with_the_reference_mask(demo, tmp_path):
    registry = Registry.default()
    tool = registry.get("segment_brain_tumor")
    ctx = ToolContext.for_case(demo, tmp_path)
    result = tool.execute(ctx, tool.args_schema(adapt="none"))
    reference = result.data["reference"]
    assert reference["file"] == demo.label_path.name
    assert reference["dice"]["WT"] > 0.8  # the shipped model on its own kind of phantom
    assert "Against the case's reference mask" in result.text
    step = Step("segment_brain_tumor", {}, True, 1.0, summary=result.text, data=result.data)
    (line,) = reconcile([step])
    assert line.startswith(f"Consistency: the segmentation agrees with the case's reference mask {reference['file']}")
    assert f"{reference['volumes_ml']['WT']:.2f} mL" in line
