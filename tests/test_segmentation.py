"""The segmentation tool family end to end with the shipped weights: tool, agent use, continual adaptation, eval."""

from __future__ import annotations

import json

import pytest
from pydicom.data import get_testdata_file

from macro import weights
from macro.case import brats_files, load_case
from macro.tools.registry import Registry
from macro.tools.segmentation.model import SLOT


@pytest.fixture(scope="module")
def lowfield_bare(tmp_path_factory):
    """A low-field phantom given as its four sequences only: no reference mask, as a user's scan would be."""
    from macro.data import make

    folder = make("brats-phantom", tmp_path_factory.mktemp("lowfield"), n=1, seed=9100, domain="lowfield")[0]
    return folder, load_case(brats_files(folder)[0])


def test_shipped_weights_record_their_training():
    manifest = weights.verify(SLOT.shipped, SLOT.regenerate)
    assert manifest["held_out_source_dice"]["mean"] > 70
    assert manifest["command"].startswith("macro train segmentation")


def test_offered_only_for_multisequence_mri(demo):
    registry = Registry.default()
    assert "segment_brain_tumor" in {t.name for t in registry.for_case(demo)}
    assert "segment_brain_tumor" not in {
        t.name for t in registry.for_case(load_case(get_testdata_file("CT_small.dcm")))
    }


def test_segmentation_then_measure_uses_the_new_mask(demo, demo_folder, home):
    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.config import Home

    truth = json.loads((demo_folder / "truth.json").read_text())["volumes_ml"]
    plan = [
        {"name": "segment_brain_tumor", "args": {"adapt": "none"}},
        {"name": "measure_volume", "args": {"region": "WT"}},
    ]
    result = Agent(ScriptedPolicy(plan=plan), "scripted", home=Home(home)).ask(demo, "segment and measure")
    seg, measure = result.trajectory.steps
    assert seg["ok"]
    assert measure["ok"]
    assert measure["inputs"]["mask"] == seg["outputs"][0]
    assert "segmentation" in measure["data"]["mask_source"]
    assert abs(measure["data"]["volume_ml"] - truth["WT"]) / truth["WT"] < 0.25
    assert measure["data"]["volume_ml"] == pytest.approx(seg["data"]["volumes_ml"]["WT"], abs=0.01)


@pytest.mark.slow
def test_agent_answers_enhancing_volume_on_a_lowfield_scan_with_adaptation(lowfield_bare, home):
    from macro.agent.graph import Agent
    from macro.agent.scripted import ScriptedPolicy
    from macro.config import Home

    folder, case = lowfield_bare
    truth = json.loads((folder / "truth.json").read_text())["volumes_ml"]["ET"]
    agent = Agent(ScriptedPolicy(), "scripted", home=Home(home))
    first = agent.ask(case, "How large is the enhancing tumour?")
    seg, measure = first.trajectory.steps
    assert seg["tool"] == "segment_brain_tumor"
    assert seg["args"]["adapt"] == "vista"
    assert seg["data"]["steps"] == 10
    assert measure["tool"] == "measure_volume"
    assert measure["args"] == {"region": "ET"}
    assert measure["ok"]
    assert f"{measure['data']['volume_ml']:.2f} mL" in first.answer
    assert measure["data"]["volume_ml"] > 0.2 * truth
    again = agent.ask(None, "Segment it again.", thread_id=first.thread_id)
    assert again.trajectory.steps[0]["data"]["stream_position"] == 2


@pytest.mark.slow
def test_eval_slice_adaptation_helps_on_a_shifted_scanner(tmp_path):
    """A two-volume slice of ``macro eval segmentation``: the documented shape, plus looser versions of the
    acceptance figures (the full run is in the README)."""
    from macro.tools.segmentation.evaluate import evaluate, write_report

    report = evaluate(tmp_path / "data", n=2, steps=10, domains=("source", "lowfield"))
    for domain in ("source", "lowfield"):
        for method in ("none", "tent", "vista"):
            r = report["domains"][domain][method]
            assert set(r["dice"]) == {"ET", "TC", "WT", "mean"}
            assert r["sec_per_volume"] > 0
    source, lowfield = report["domains"]["source"], report["domains"]["lowfield"]
    assert source["none"]["dice"]["WT"] > 70
    assert source["vista"]["dice"]["mean"] >= source["none"]["dice"]["mean"] - 2
    assert lowfield["vista"]["dice"]["mean"] >= lowfield["none"]["dice"]["mean"] + 1.5
    assert lowfield["vista"]["sec_per_volume"] <= 6 * lowfield["tent"]["sec_per_volume"]
    gain = report["differences"]["lowfield: vista - none"]
    assert gain["mean"] == pytest.approx(lowfield["vista"]["dice"]["mean"] - lowfield["none"]["dice"]["mean"])
    assert gain["ci"] is None and report["provenance"]["seeds"] == [0]  # one stream: no interval
    files = write_report(report, tmp_path / "report")
    assert all(f.stat().st_size > 0 for f in files)
