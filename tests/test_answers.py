"""Answers a clinician can read: each tool states its result in one sentence, the answer starts with it, caveats
follow, internal messages stay out; on real scans from the wheels, "Describe this scan" leads with modality,
dimensions and spacing."""

from __future__ import annotations

from pathlib import Path

import pytest

from macro.agent.graph import Agent
from macro.agent.scripted import ScriptedPolicy
from macro.case import load_case
from macro.config import Home
from macro.tools.base import ToolContext
from macro.tools.registry import Registry
from tests.test_agent import Replay


def _wheel(name: str) -> Path:
    import nibabel
    import nilearn
    import pydicom.data

    roots = {
        "pydicom": Path(pydicom.data.__file__).parent / "test_files",
        "nibabel": Path(nibabel.__file__).parent / "tests" / "data",
        "nilearn": Path(nilearn.__file__).parent / "datasets" / "data",
    }
    wheel, rel = name.split(":")
    return roots[wheel] / rel


REAL = {
    "pydicom:CT_small.dcm": ("CT scan, 2D, 128x128 voxels",),
    "pydicom:MR_small.dcm": ("MR scan, 2D, 64x64 voxels",),
    "pydicom:examples_rgb_color.dcm": ("Ultrasound scan, 2D, 240x320 voxels",),
    "nibabel:anatomical.nii": ("MR scan, 3D, 33x41x25 voxels at 2x2x2 mm",),
    "nibabel:0.dcm": ("MR scan, 2D, 256x256 voxels",),
    "nilearn:mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": ("MR scan, 3D, 197x233x189 voxels at 1x1x1 mm",),
}


@pytest.mark.parametrize("name", list(REAL))
def test_describe_leads_with_modality_dimensions_and_spacing(name, home):
    agent = Agent(ScriptedPolicy(), "scripted", home=Home(home))
    result = agent.ask(load_case(_wheel(name)), "Describe this scan")
    lead = result.answer.splitlines()[0]
    for part in REAL[name]:
        assert part in lead, (name, lead)
    assert " mm" in lead
    assert all(s["ok"] for s in result.trajectory.steps)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from macro.data import make

    root = tmp_path_factory.mktemp("answers")
    return {
        "dermoscopy": make("derm-phantom", root / "derm", n=1, seed=3)[0],
        "xray": make("stepcot-phantom", root / "sc", n=1, seed=3)[0],
    }


def test_every_built_in_tool_states_its_result_in_one_sentence(demo, phantoms, tmp_path):
    registry = Registry.default()
    ct = load_case(_wheel("pydicom:CT_small.dcm"))  # score_anomaly is offered for the bank's modalities
    cases = [demo, load_case(phantoms["dermoscopy"]), load_case(phantoms["xray"]), ct]
    seen = set()
    for case in cases:
        for tool in registry.for_case(case):
            args = {"adapt": "none"} if tool.name == "segment_brain_tumor" else {}
            result = tool.execute(ToolContext.for_case(case, tmp_path), tool.args_schema(**args))
            assert result.headline, tool.name
            assert "\n" not in result.headline and result.headline.endswith("."), (tool.name, result.headline)
            assert len(result.headline) <= 240, (tool.name, result.headline)
            seen.add(tool.name)
    assert seen == set(registry.atomic())


def test_internal_notes_stay_out_of_the_answer_and_the_lead_is_the_result(demo, home):
    policy = Replay(
        replies=['<tool_call>{"name": "measure_volume", "arguments": {"region": "WT", "units": "ml"}}</tool_call>', ""],
        seen=[],
    )
    result = Agent(policy, "replay", home=Home(home)).ask(demo, "How big is the tumour?")
    assert result.answer.startswith("The whole tumour (WT) volume is 37.67 mL")
    assert "ignored unknown argument" not in result.answer
    told = [m for m in policy.seen[-1] if m.type == "tool"]
    assert "ignored unknown argument(s): units" in told[0].text  # the policy is still told


def test_segmentation_caveat_names_the_adaptation(demo, home):
    policy = Replay(replies=['<tool_call>{"name": "segment_brain_tumor", "arguments": {}}</tool_call>', ""], seen=[])
    result = Agent(policy, "replay", home=Home(home)).ask(demo, "Segment the tumour")
    lines = result.answer.splitlines()
    assert lines[0].startswith("Segmented the tumour: whole tumour")
    assert lines[1].startswith("Caveat: The segmentation model adapted itself to this scanner (VISTA")
