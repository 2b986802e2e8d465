"""The embedded policy (SmolLM2 + the shipped LoRA adapter, constrained decoding) as users meet it: the demo, a
piped chat, and "Describe this scan" on real scans it was not trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from macro import weights
from macro.agent.local_llm import ADAPTER
from macro.cli import app
from macro.eval.policy import REQUESTS, clean_episode, load_requests

# Real scans from the wheels that the SFT dialogues are not built from (those use anatomical.nii and CT_small.dcm).
UNSEEN_SCANS = (
    ("nibabel", "tests/data/standard.nii.gz"),
    ("nibabel", "tests/data/reoriented_anat_moved.nii"),
    ("nibabel", "nicom/tests/data/0.dcm"),
    ("pydicom", "data/test_files/MR_small.dcm"),
    ("pydicom", "data/test_files/693_J2KI.dcm"),
    ("pydicom", "data/test_files/ExplVR_BigEnd.dcm"),
)


def test_shipped_adapter_records_its_training():
    manifest = weights.verify(ADAPTER.shipped, ADAPTER.regenerate)
    assert manifest["files"]["adapter_model.safetensors"]["bytes"] < 20 * 2**20
    held_out = manifest["held_out"]
    assert held_out["requests"] == REQUESTS.name and held_out["n"] == len(load_requests())
    assert held_out["parseable"] == held_out["valid"] == 100.0  # constrained decoding: no invalid call can be written
    assert manifest["command"].startswith("macro train sft")


@pytest.fixture
def model_env(model_home, monkeypatch):
    monkeypatch.setenv("MACRO_HOME", str(model_home.root))
    return model_home


@pytest.mark.slow
def test_demo_answers_the_volume_in_at_most_two_calls(model_env):
    result = CliRunner().invoke(app, ["demo", "--policy", "embedded"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert "whole tumour" in first.lower() and " mL" in first, first
    calls = int(result.stdout.rsplit("; ", 1)[-1].split(" tool call")[0])
    assert 1 <= calls <= 2
    assert "FAILED" not in result.stdout and "repeat a call" not in result.stdout


@pytest.mark.slow
def test_three_piped_chat_turns_each_get_an_answer(model_env, demo_folder):
    from macro.trajectory import TrajectoryStore

    questions = ["How large is the tumour?", "Show me a slice through it", "And the enhancing part?"]
    result = CliRunner().invoke(app, ["chat", str(demo_folder), "--policy", "embedded"], input="\n".join(questions))
    assert result.exit_code == 0, result.output
    thread = result.stderr.strip().split("--thread ")[-1]
    turns = TrajectoryStore(model_env.trajectories_db).list(thread_id=thread)
    assert [t.question for t in turns] == questions
    for turn in turns:
        assert not turn.format_errors and "did not produce a valid tool call" not in turn.answer
        assert clean_episode(turn.steps, turn.answer, turn.format_errors)["failed_calls"] == 0
    assert [s["tool"] for s in turns[1].steps] == ["render_slice"]
    (et,) = [s for s in turns[2].steps if s["tool"] == "measure_volume"]
    assert et["args"]["region"] == "ET" and f"{et['data']['volume_ml']:.2f} mL" in turns[2].answer


@pytest.mark.slow
def test_describe_real_scans_it_never_trained_on(model_env):
    import importlib.util

    from macro.agent.graph import Agent
    from macro.agent.policy import make_policy
    from macro.case import load_case

    policy, policy_id = make_policy("embedded", model_env)
    agent = Agent(policy, policy_id, home=model_env, memory=False)
    for package, rel in UNSEEN_SCANS:
        path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / rel
        case = load_case(path)
        turn = agent.ask(case, "Describe this scan.")
        steps = turn.trajectory.steps
        assert [s["tool"] for s in steps] == ["describe_scan"] and steps[0]["ok"], (rel, steps)
        first = turn.answer.splitlines()[0]
        assert steps[0]["headline"] in first, (rel, first)
        assert "x".join(map(str, case.shape)) in first and " mm" in first, (rel, first)
