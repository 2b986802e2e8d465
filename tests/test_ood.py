"""Out-of-distribution checks of the classifiers and the stepwise VQA: the density itself, the shipped checks on
unseen phantoms, noise and the wheels' real scans, and what the tools say when an image is unlike their training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from macro import weights
from macro.case import load_case
from macro.tools import ood
from macro.tools.base import ToolContext
from macro.tools.classification import model as classification
from macro.tools.registry import Registry
from macro.tools.vqa import checkpoint as vqa

UNSEEN_SEED = 991
CT_SMALL = "CT_small.dcm"
TOOLS = {"derm": "classify_lesion", "cxr": "classify_findings", "vqa": "answer_stepwise"}
MODALITY = {"derm": "dermoscopy", "cxr": "xray", "vqa": "xray"}
DATASET = {"derm": "derm-phantom", "cxr": "cxr-phantom", "vqa": "stepcot-phantom"}


def test_density_flags_about_its_quantile_of_held_out_and_everything_far():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 64))
    draw = lambda n: rng.normal(size=(n, 8)) * np.arange(8, 0, -1) @ basis + 0.1 * rng.normal(size=(n, 64))  # noqa: E731
    density = ood.fit_density(draw(2000), draw(1000), k=8)
    _, inside = density.check(draw(2000))
    assert 0.95 < inside.mean() < 1.0
    off_subspace = draw(50) + 2.0 * rng.normal(size=(50, 64))
    assert not density.check(off_subspace)[1].any()
    again = ood.Density.load(density.tensors(), density.info())
    x = draw(20)
    assert np.allclose(again.distance(x), density.distance(x), rtol=1e-3)


@pytest.mark.parametrize("name", ["classification/derm", "classification/cxr", "vqa"])
def test_shipped_models_carry_their_check(name):
    slot = vqa.SLOT if name == "vqa" else classification.SLOTS[name.split("/")[1]]
    manifest = weights.verify(slot.shipped, slot.regenerate)
    assert ood.FILE in manifest["files"]
    assert manifest["ood"]["quantile"] == 0.99
    assert manifest["ood"]["threshold"] > 0
    assert manifest["ood"]["feature"]


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    from macro.data import make

    root = tmp_path_factory.mktemp("ood")
    return {task: make(dataset, root / task, n=30, seed=UNSEEN_SEED) for task, dataset in DATASET.items()}


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    path = tmp_path_factory.mktemp("noise") / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 128, 3)).astype(np.uint8)).save(path)
    return path


def _run(task: str, case, root: Path):
    tool = Registry.default().get(TOOLS[task])
    return tool.execute(ToolContext.for_case(case, root), tool.args_schema())


@pytest.mark.parametrize("task", list(TOOLS))
def test_unseen_images_of_the_training_kind_are_in_distribution(task, unseen, home):
    verdicts = [_run(task, load_case(path), home).data["in_distribution"] for path in unseen[task]]
    assert sum(verdicts) >= 27, verdicts  # the threshold lets 99 % of held-out images through


@pytest.mark.parametrize("task", list(TOOLS))
def test_noise_gets_a_caveat_and_no_label(task, noise, home):
    result = _run(task, load_case(noise, modality=MODALITY[task]), home)
    assert result.data["in_distribution"] is False
    assert result.data["distance"] > result.data["threshold"]
    assert "not like the" in result.text
    label = {"derm": "top", "cxr": "present", "vqa": "diagnosis"}[task]
    assert not result.data[label]
    assert "probabilities (calibrated)" not in result.text and "Diagnosis:" not in result.text


@pytest.mark.parametrize("task", list(TOOLS))
def test_a_real_ct_slice_declared_as_the_tools_modality_is_outside(task, home):
    import pydicom.data

    path = Path(pydicom.data.get_testdata_file(CT_SMALL))
    result = _run(task, load_case(path, modality=MODALITY[task]), home)
    assert result.data["in_distribution"] is False


@pytest.mark.parametrize("task", ["cxr", "vqa"])
def test_skin_phantoms_are_outside_the_chest_models(task, unseen, home):
    verdicts = [_run(task, load_case(p, modality="xray"), home).data["in_distribution"] for p in unseen["derm"][:10]]
    assert not any(verdicts), verdicts


def test_the_evaluation_separates_every_model_s_images_from_the_rest(tmp_path):
    from macro.eval.ood import evaluate, markdown

    report = evaluate(tmp_path, n_in=60, log=lambda _: None)
    assert set(report["models"]) == {"classification/derm", "classification/cxr", "vqa"}
    for name, row in report["models"].items():
        assert row["auroc"] >= 95, (name, row)
        assert row["n_out"]["wheels"] >= 50, (name, row)
        assert row["in_flagged"] <= 5, (name, row)
    assert "| vqa |" in markdown(report)
