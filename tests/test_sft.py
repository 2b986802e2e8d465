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
    """Dialogues on the demo case (reference mask) and a real CT; without the segmentation tool, whose examples
    would spend minutes segmenting (the chain rows it starts are covered by the trained adapter's manifest)."""
    registry = Registry([t for t in Registry.default().all() if t.name != "segment_brain_tumor"])
    return sft_data.build([demo, load_case(get_testdata_file("CT_small.dcm"))], registry, seed=0)


def test_the_manifest_names_only_tools_the_rows_teach(data, demo):
    """The segmentation tool is offered on the demo case but these rows were built without it: an adapter trained
    on them must not claim it (the coverage warning would go quiet for a tool the policy never saw)."""
    from macro.training.sft import trained_versions

    cases = [demo, load_case(get_testdata_file("CT_small.dcm"))]
    registry = Registry.default()
    assert "segment_brain_tumor" in {t.name for t in registry.for_case(demo)}
    trained = trained_versions(data, cases, registry)
    assert "segment_brain_tumor" not in trained and "describe_scan" in trained
    assert trained["describe_scan"] == registry.get("describe_scan").spec.version


def test_held_out_requests_never_appear_in_training(data):
    """Spec examples of the test split stay out of every row, and the hand-written held-out requests are new."""
    from macro.eval.policy import load_requests

    registry = Registry.default()
    users = {r["user"].lower() for r in data}
    for tool in registry.all():
        train = {e.request for e in sft_data.split_examples(tool, "train")}
        test = {e.request for e in sft_data.split_examples(tool, "test")}
        assert test
        assert not train & test
        assert not any(t.lower().rstrip(".?!") in u for t in test for u in users)
    examples = {e.request.lower() for t in registry.all() for e in (*t.spec.examples, *t.spec.follow_ups)}
    written = load_requests()
    assert {r["tool"] for r in written} == set(registry.atomic()), "the held-out set covers every atomic tool"
    assert not examples & {r["request"].lower() for r in written}


def test_rows_cover_whole_conversations_in_the_runtime_format(data):
    kinds = {r["kind"] for r in data}
    assert kinds == {"first_call", "answer", "follow_up", "recovery", "no_tool", "small_talk"}
    row = next(r for r in data if r["kind"] == "first_call")
    assert row["prompt"][0]["role"] == "system"
    assert "Tools:" in row["prompt"][0]["content"]
    assert row["completion"][0]["content"].startswith("<tool_call>")
    ct_rows = [r for r in data if r["case_ref"]["modality"] == "ct"]
    assert {r["tool"] for r in ct_rows} >= {"describe_scan", "score_anomaly"}
    assert all(("measure_volume" not in r["prompt"][0]["content"] for r in ct_rows))
    recovery = next(r for r in data if r["kind"] == "recovery")
    assert recovery["prompt"][-1]["role"] == "tool" and "error" in recovery["prompt"][-1]["content"]


def test_what_a_call_needs_first_comes_from_the_specs(demo, tmp_path):
    """measure_volume reads a mask: the case's reference one, one made earlier in the thread, or a segmentation
    run first; on a scan where nothing can make one it is not offered at all."""
    import nibabel

    from macro.data import example_case

    registry = Registry.default()
    measure = registry.get("measure_volume")
    bare = example_case("lowfield-sequences", tmp_path)
    assert registry.prerequisites(measure, bare) == ["segment_brain_tumor"]
    assert registry.prerequisites(measure, bare, frozenset({"mask"})) == []
    assert registry.prerequisites(measure, demo) == []
    t1 = load_case(nibabel.__file__.rsplit("/", 1)[0] + "/tests/data/anatomical.nii")
    assert "measure_volume" not in {t.name for t in registry.for_case(t1)}


def test_answers_quote_real_tool_output(data, demo_folder):
    truth = json.loads((demo_folder / "truth.json").read_text())["volumes_ml"]
    answers = [r["completion"][0]["content"] for r in data if r["kind"] == "answer"]
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
    assert saved["held_out"]["requests"] == "policy_requests.jsonl"
    assert saved["seed"] == 0
    assert saved["command"] == "pytest"
    assert saved["lora"]["r"] == recipe.lora_r
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging folder is left behind"

    from macro.training.sft import rescore

    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"}
    rescored = rescore(out, tiny_model, Registry.default(), 1, "pytest")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"} == files
    assert rescored["sha256"] == manifest["sha256"] and rescored["created"] == manifest["created"]
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["held_out"]["n"] == 1 and "scored" in saved["held_out"] and saved["train"]["steps"] == 2
