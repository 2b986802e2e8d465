"""The embedded policy (SmolLM2 + the shipped LoRA adapter) drives the agent on the demo case."""

from __future__ import annotations

import pytest

from macro import weights
from macro.agent.local_llm import ADAPTER


def test_shipped_adapter_records_its_training():
    manifest = weights.verify(ADAPTER.shipped, ADAPTER.regenerate)
    assert manifest["files"]["adapter_model.safetensors"]["bytes"] < 20 * 2**20
    assert manifest["held_out"]["n"] == 50
    assert manifest["held_out"]["valid_right_tool"] >= 80.0
    assert manifest["command"].startswith("macro train sft")


@pytest.mark.slow
def test_embedded_policy_answers_the_demo_question_with_a_real_tool(demo, model_home):
    from macro.agent.graph import Agent
    from macro.agent.policy import make_policy

    policy, policy_id = make_policy("embedded", model_home)
    assert "lora" in policy_id
    result = Agent(policy, policy_id, home=model_home).ask(demo, "What is the tumour volume?")
    ok = [s for s in result.trajectory.steps if s["ok"]]
    assert ok
    assert ok[0]["tool"] in ("measure_volume", "segment_brain_tumor")
    wt = ok[0]["data"]["volume_ml"] if ok[0]["tool"] == "measure_volume" else ok[0]["data"]["volumes_ml"]["WT"]
    assert f"{wt:.2f} mL" in result.answer
