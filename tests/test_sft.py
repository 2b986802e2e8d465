"""SFT data generation (held-out wording really held out) and the trainer on a tiny model."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydicom.data import get_testdata_file
from safetensors import safe_open

from macro.case import load_case
from macro.tools.registry import Registry
from macro.training import sft_data


@pytest.fixture(scope="module")
def data(demo):
    return sft_data.build([demo, load_case(get_testdata_file("CT_small.dcm"))], Registry.default(), seed=0)


def test_held_out_requests_never_appear_in_training(data):
    registry = Registry.default()
    for tool in registry.all():
        train = {e.request for e in sft_data.split_examples(tool, "train")}
        test = {e.request for e in sft_data.split_examples(tool, "test")}
        assert test
        assert not train & test
    train_users = {r["user"] for r in data["train"]}
    assert not train_users & {r["user"] for r in data["test"]}


def test_rows_are_prompt_completion_in_the_runtime_format(data):
    kinds = {r["kind"] for r in data["train"]}
    assert kinds == {"first_call", "answer", "follow_up", "chain", "small_talk"}
    row = next(r for r in data["train"] if r["kind"] == "first_call")
    assert row["prompt"][0]["role"] == "system"
    assert "Tools:" in row["prompt"][0]["content"]
    assert row["completion"][0]["content"].startswith("<tool_call>")
    ct_rows = [r for r in data["train"] if r["case_ref"]["modality"] == "ct"]
    assert ct_rows
    assert all(("measure_volume" not in r["prompt"][0]["content"] for r in ct_rows))


def test_answers_quote_real_tool_output(data, demo_folder):
    truth = json.loads((demo_folder / "truth.json").read_text())["volumes_ml"]
    answers = [r["completion"][0]["content"] for r in data["train"] if r["kind"] == "answer"]
    assert any(
        f"{truth['WT']:.2f} mL" in a or f"{truth['ET']:.2f} mL" in a or f"{truth['TC']:.2f} mL" in a for a in answers
    )


@pytest.mark.slow
def test_train_sft_on_a_tiny_model_writes_fp16_adapter_and_manifest(tmp_path, tiny_model):
    from macro.training.sft import SFTRecipe, train_sft

    out = tmp_path / "adapter"
    recipe = SFTRecipe(max_steps=2, eval_prompts=2, batch_size=2)
    manifest = train_sft(out, recipe, tiny_model, [load_case(get_testdata_file("CT_small.dcm"))], command="pytest")
    weights = out / manifest["files"]["adapter_model.safetensors"]["file"]
    assert manifest["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    with safe_open(str(weights), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["train"]["steps"] == 2
    assert saved["held_out"]["n"] == 2, "held-out figures are measured on the fp16 adapter as written"
    assert saved["seed"] == 0
    assert saved["command"] == "pytest"
    assert saved["lora"]["r"] == recipe.lora_r
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging folder is left behind"
