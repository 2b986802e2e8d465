"""The brain MRI phantom: seeded, anatomically sane, BraTS-labelled, and readable by ``macro.case``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from macro.case import load_case
from macro.data import demo_case, make
from macro.data.brain import case_files, load_anatomy
from macro.errors import CaseError

CUBE = np.ones((3, 3, 3), dtype=bool)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Seed 0 twice (once through the demo cache) and seed 1: three builds shared by every test."""
    home = tmp_path_factory.mktemp("home")
    seed0, seed1 = make("brain-mri-demo", tmp_path_factory.mktemp("out"), n=2, seed=0)
    return {"home": home, "demo": demo_case(home), "seed0": seed0, "seed1": seed1}


def _seg(folder: Path) -> np.ndarray:
    return np.asarray(nib.load(str(case_files(folder)[-1])).dataobj)


def _t1(folder: Path) -> np.ndarray:
    return np.asarray(nib.load(str(case_files(folder)[0])).dataobj)


def test_same_seed_gives_identical_case(built):
    assert np.array_equal(_seg(built["demo"]), _seg(built["seed0"]))
    assert np.array_equal(_t1(built["demo"]), _t1(built["seed0"]))
    assert load_case(built["demo"]).id == load_case(built["seed0"]).id


def test_different_seed_gives_different_tumour(built):
    assert not np.array_equal(_seg(built["seed0"]), _seg(built["seed1"]))
    assert json.loads((built["seed1"] / "truth.json").read_text())["seed"] == 1


@pytest.mark.parametrize("key", ["seed0", "seed1"])
def test_compartments_are_nested_and_non_empty(built, key):
    seg = _seg(built[key])
    assert seg.dtype == np.uint8
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    ncr, et, wt = seg == 1, seg == 3, seg > 0
    tc = ncr | et
    assert ndi.binary_dilation(ncr, CUBE)[~tc].sum() == 0, "ET must enclose the necrotic core"
    assert ndi.binary_dilation(tc, CUBE)[~wt].sum() == 0, "oedema must surround the tumour core"


@pytest.mark.parametrize("key", ["seed0", "seed1"])
def test_tumour_lies_in_one_hemisphere_of_the_brain(built, key):
    anatomy = load_anatomy()
    wt = _seg(built[key]) > 0
    assert not (wt & ~anatomy.brain).any()
    x = (anatomy.affine @ np.c_[np.argwhere(wt), np.ones(wt.sum())].T)[0]
    assert (x > 0).all() or (x < 0).all()


@pytest.mark.parametrize("key", ["seed0", "seed1"])
def test_truth_volumes_match_the_seg_file(built, key):
    truth = json.loads((built[key] / "truth.json").read_text())
    case = load_case(built[key])
    seg = _seg(built[key])
    assert truth["dataset"] == "brain-mri-demo"
    assert truth["case"] == built[key].name
    assert truth["shape"] == list(seg.shape)
    assert truth["spacing_mm"] == list(case.spacing)
    assert truth["labels"] == {"1": "NCR", "2": "ED", "3": "ET"}
    regions = {"ET": seg == 3, "TC": (seg == 1) | (seg == 3), "WT": seg > 0}
    assert truth["volumes_ml"] == {name: int(mask.sum()) * case.voxel_ml for name, mask in regions.items()}
    assert 15 <= truth["volumes_ml"]["WT"] <= 90


def test_case_loads_as_multisequence_mri_with_labels(built):
    case = load_case(built["seed0"])
    assert case.modality == "mri-multiseq"
    assert case.channels == ("t1", "t1ce", "t2", "flair")
    assert case.label_path is not None
    assert case.label_path.name == "demo-000-seg.nii.gz"
    assert np.array_equal(case.labels, _seg(built["seed0"]))
    assert case.image.dtype == np.float32
    assert case.image.shape == (4, *case.shape)


def test_contrasts_follow_tissue_physics(built):
    case = load_case(built["seed0"])
    anatomy = load_anatomy()
    wm, gm, csf = anatomy.wm > 0.9, anatomy.gm > 0.9, anatomy.csf > 0.9
    healthy = case.labels == 0
    mean = {
        name: {
            tissue: float(case.channel(name)[mask & healthy].mean())
            for tissue, mask in {"wm": wm, "gm": gm, "csf": csf}.items()
        }
        for name in case.channels
    }
    assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
    assert mean["t2"]["csf"] > mean["t2"]["gm"] > mean["t2"]["wm"]
    assert mean["flair"]["csf"] < mean["flair"]["wm"]
    et, ed = case.labels == 3, case.labels == 2
    assert case.channel("t1ce")[et].mean() > 1.2 * mean["t1ce"]["wm"]
    assert case.channel("flair")[ed].mean() > 1.5 * mean["flair"]["wm"]
    assert float(case.channel("t1")[~anatomy.brain].mean()) < 20


def test_demo_case_is_cached_and_rebuilt_when_incomplete(built, tmp_path):
    folder = built["demo"]
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert demo_case(built["home"]) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    home = tmp_path / "home"
    shutil.copytree(built["home"], home)
    case_files(home / "brain-mri-demo" / "demo-000")[3].unlink()
    rebuilt = demo_case(home)
    assert all(p.is_file() for p in case_files(rebuilt))
    assert np.array_equal(_seg(rebuilt), _seg(folder))
    assert [p.name for p in (home / "brain-mri-demo").iterdir()] == ["demo-000"]


def test_unknown_dataset_is_a_case_error(tmp_path):
    with pytest.raises(CaseError, match="unknown dataset 'nope'") as err:
        make("nope", tmp_path)
    assert "brain-mri-demo" in (err.value.accepted or "")
