"""Real BraTS layouts and label conventions, and the shifted ``brats-phantom`` domains built on the MRI phantom."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from macro.case import load_case
from macro.data import make
from macro.data.brain import case_files
from macro.data.brats import convention_for, find_cases, region_masks, region_stack
from macro.data.domains import DOMAINS, zoomed_anatomy
from macro.errors import CaseError

# brain-mri-demo seed 0, measured before the domains were added: the demo must not change. Label counts are exact
# (the tumour geometry is integer work); intensities are compared as statistics, which survive a numpy/scipy rebuild
# that moves the last bits of a resampled voxel.
DEMO_SEED0_LABELS = {0: 1095676, 1: 220, 2: 3628, 3: 861}
DEMO_SEED0_T1N = {"mean": 137.976, "std": 257.959, "p1": 1.2827, "p50": 11.3748, "p99": 870.70}
DEMO_SHAPE = (99, 117, 95)
NEW_NAMES = ("t1n", "t1c", "t2w", "t2f", "seg")
OLD_NAMES = ("t1", "t1ce", "t2", "flair", "seg")


# ---------------------------------------------------------------- real-data layouts


def _write_case(folder: Path, names: tuple[str, ...], sep: str, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for name in names:
        shape = (12, 12, 12)
        data = rng.integers(0, 5, shape).astype(np.uint8) if name == "seg" else rng.random(shape, np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), folder / f"{folder.name}{sep}{name}.nii.gz")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Both naming layouts, nested at different depths, one case without seg, plus folders that are not cases."""
    root = tmp_path_factory.mktemp("brats")
    rng = np.random.default_rng(0)
    _write_case(root / "train" / "BraTS-GLI-00001-000", NEW_NAMES, "-", rng)
    _write_case(root / "train" / "BraTS-PED-00002-000", NEW_NAMES, "-", rng)
    _write_case(root / "val" / "BraTS-SSA-00004-000", NEW_NAMES[:4], "-", rng)
    _write_case(root / "BraTS2021_00003", OLD_NAMES, "_", rng)
    _write_case(root / ".cache" / "BraTS-GLI-00009-000", NEW_NAMES, "-", rng)
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("not a case\n")
    return root


def test_find_cases_finds_both_layouts_sorted(dataset):
    found = find_cases(dataset)
    assert [p.relative_to(dataset).as_posix() for p in found] == [
        "BraTS2021_00003",
        "train/BraTS-GLI-00001-000",
        "train/BraTS-PED-00002-000",
        "val/BraTS-SSA-00004-000",
    ]
    for folder in found:
        case = load_case(folder)
        assert case.channels == ("t1", "t1ce", "t2", "flair")
        assert case.shape == (12, 12, 12)
    assert load_case(found[0]).label_path.name == "BraTS2021_00003_seg.nii.gz"
    assert load_case(found[-1]).label_path is None
    assert find_cases(found[1]) == [found[1]], "a case folder given as root is itself the dataset"


def test_find_cases_without_cases_names_the_root(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CaseError, match="no BraTS case folders") as err:
        find_cases(tmp_path / "empty")
    assert err.value.path == str(tmp_path / "empty")
    with pytest.raises(CaseError, match="not found"):
        find_cases(tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "convention"),
    [
        ("BraTS-PED-00002-000", "ped"),
        ("brats-ped-00002-000-seg.nii.gz", "ped"),
        (Path("/data/BraTS2024-PED/BraTS-PED-00002-000"), "ped"),
        ("BraTS-GLI-00001-000", "gli"),
        ("BraTS-SSA-00004-000-t1n.nii.gz", "gli"),
        ("BraTS2021_00003", "gli"),
    ],
)
def test_convention_follows_the_case_name(name, convention):
    assert convention_for(name) == convention


def test_label_4_is_enhancing_in_gli_and_oedema_in_ped():
    labels = np.arange(5).reshape(5, 1, 1)
    gli, ped = region_masks(labels, "gli"), region_masks(labels, "ped")
    assert {k: np.flatnonzero(v).tolist() for k, v in gli.items()} == {
        "ET": [3, 4],
        "TC": [1, 3, 4],
        "WT": [1, 2, 3, 4],
    }
    assert {k: np.flatnonzero(v).tolist() for k, v in ped.items()} == {"ET": [1], "TC": [1, 2, 3], "WT": [1, 2, 3, 4]}
    stack = region_stack(labels, "ped")
    assert stack.shape == (3, 5, 1, 1)
    assert stack.dtype == np.float32
    assert np.array_equal(stack, np.stack([ped["ET"], ped["TC"], ped["WT"]]).astype(np.float32))
    with pytest.raises(CaseError, match="unknown label convention"):
        region_masks(labels, "men")


# ---------------------------------------------------------------- shifted phantom domains


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {
        f.name.removeprefix(folder.name + "-").removesuffix(".nii.gz"): np.asarray(nib.load(str(f)).dataobj)
        for f in case_files(folder)
    }


def _t1n_stats(t1n: np.ndarray) -> dict[str, float]:
    p1, p50, p99 = np.percentile(t1n, [1, 50, 99])
    return {"mean": float(t1n.mean()), "std": float(t1n.std()), "p1": p1, "p50": p50, "p99": p99}


def _label_counts(seg: np.ndarray) -> dict[int, int]:
    return {int(k): int(v) for k, v in zip(*np.unique(seg, return_counts=True))}


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Seed 0 of every domain, built twice in separate folders."""
    return {
        name: tuple(
            make("brats-phantom", tmp_path_factory.mktemp(f"{name}{i}"), n=1, seed=0, domain=name)[0] for i in range(2)
        )
        for name in DOMAINS
    }


@pytest.fixture(scope="module")
def cases(domains) -> dict[str, dict[str, np.ndarray]]:
    return {name: _arrays(folders[0]) for name, folders in domains.items()}


def _regions(name: str, seg: np.ndarray) -> dict[str, np.ndarray]:
    masks = region_masks(seg, DOMAINS[name].convention)
    return {**masks, "core": masks["TC"] & ~masks["ET"], "ED": masks["WT"] & ~masks["TC"]}


def _mean(cases, name: str, sequence: str, region: str) -> float:
    return float(cases[name][sequence][_regions(name, cases[name]["seg"])[region]].mean())


def test_brain_mri_demo_labels_are_unchanged(demo_folder):
    seg = _arrays(demo_folder)["seg"]
    assert seg.shape == DEMO_SHAPE
    assert _label_counts(seg) == DEMO_SEED0_LABELS


@pytest.mark.parametrize("statistic", list(DEMO_SEED0_T1N))
def test_brain_mri_demo_intensities_are_unchanged(demo_folder, statistic):
    t1n = _arrays(demo_folder)["t1n"]
    assert t1n.shape == DEMO_SHAPE
    assert _t1n_stats(t1n)[statistic] == pytest.approx(DEMO_SEED0_T1N[statistic], rel=1e-3)


@pytest.mark.parametrize("sequence", ["t1n", "t1c", "t2w", "t2f", "seg"])
def test_source_domain_is_the_demo_phantom(cases, demo_folder, sequence):
    assert np.array_equal(cases["source"][sequence], _arrays(demo_folder)[sequence])


@pytest.mark.parametrize("name", list(DOMAINS))
def test_domain_is_deterministic(domains, name):
    first, second = domains[name]
    assert first.name == second.name
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(first).values(), _arrays(second).values()))
    assert (first / "truth.json").read_text() == (second / "truth.json").read_text()


@pytest.mark.parametrize(
    ("name", "prefix", "convention"),
    [("source", "BraTS-GLI", "gli"), ("lowfield", "BraTS-SSA", "gli"), ("pediatric", "BraTS-PED", "ped")],
)
def test_cases_are_named_and_labelled_like_the_real_data(domains, name, prefix, convention):
    folder = domains[name][0]
    assert re.fullmatch(f"{prefix}-\\d{{5}}-000", folder.name)
    assert folder.name == f"{prefix}-00000-000"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{folder.name}-{suffix}.nii.gz" for suffix in NEW_NAMES] + ["truth.json"]
    )
    assert convention_for(folder.name) == convention
    truth = json.loads((folder / "truth.json").read_text())
    assert (truth["dataset"], truth["domain"], truth["label_convention"]) == ("brats-phantom", name, convention)
    assert truth["seed"] == 0
    case = load_case(folder)
    assert case.channels == ("t1", "t1ce", "t2", "flair")
    assert case.label_path.name == f"{folder.name}-seg.nii.gz"
    masks = region_masks(case.labels, convention)
    assert truth["volumes_ml"] == {region: int(mask.sum()) * case.voxel_ml for region, mask in masks.items()}


def test_pediatric_labels_use_the_ped_convention(cases, domains):
    seg = cases["pediatric"]["seg"]
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}, "ET, NET and ED; no cystic component"
    truth = json.loads((domains["pediatric"][0] / "truth.json").read_text())
    assert truth["labels"] == {"1": "ET", "2": "NET", "3": "CC", "4": "ED"}
    ped, source = _regions("pediatric", seg), _regions("source", cases["source"]["seg"])
    assert ped["ET"].sum() / ped["TC"].sum() < 0.8 * source["ET"].sum() / source["TC"].sum()
    assert ped["WT"].sum() < source["WT"].sum()


def test_pediatric_head_is_smaller_and_tumour_deep_near_the_midline(cases):
    brain = {name: int((cases[name]["t1n"] > 100).sum()) for name in ("source", "pediatric")}
    assert 0.55 < brain["pediatric"] / brain["source"] < 0.7
    anatomy = zoomed_anatomy(DOMAINS["pediatric"].head_zoom)
    wt = np.argwhere(_regions("pediatric", cases["pediatric"]["seg"])["WT"])
    x, y, z = (anatomy.affine[:3, :3] @ wt.T + anatomy.affine[:3, 3:]).mean(axis=1)
    assert abs(x) < 20
    assert y < -10
    assert z < 15


def _step_std(image: np.ndarray, mask: np.ndarray, axis: int) -> float:
    """Std of the difference between neighbours along ``axis`` where both lie in ``mask``."""
    n = image.shape[axis]
    both = np.take(mask, range(n - 1), axis) & np.take(mask, range(1, n), axis)
    return float(np.diff(image, axis=axis)[both].std())


def test_lowfield_keeps_the_tumour_and_degrades_every_sequence(cases):
    assert np.array_equal(cases["lowfield"]["seg"], cases["source"]["seg"])
    background = ~ndi.binary_dilation(zoomed_anatomy(1.0).brain, iterations=3)
    for sequence in ("t1n", "t1c", "t2w", "t2f"):
        source, lowfield = cases["source"][sequence], cases["lowfield"][sequence]
        assert lowfield[background].std() > 1.5 * source[background].std()
        # thick slices: neighbouring z slices resemble each other more than neighbouring x slices do
        assert _step_std(lowfield, background, 2) < 0.8 * _step_std(lowfield, background, 0)
        assert _step_std(source, background, 2) > 0.9 * _step_std(source, background, 0)


def test_enhancement_relative_to_t1_drops_in_both_targets(cases):
    ratio = {name: _mean(cases, name, "t1c", "ET") / _mean(cases, name, "t1n", "ET") for name in DOMAINS}
    assert ratio["source"] > 1.5
    assert ratio["lowfield"] < 1.35
    assert ratio["pediatric"] < 1.45


def test_flair_and_t2_relations_change_in_both_targets(cases):
    oedema = {name: _mean(cases, name, "t2f", "ED") / _mean(cases, name, "t2w", "ED") for name in DOMAINS}
    assert oedema["lowfield"] < 0.85 < 1.0 < oedema["source"]
    core_vs_oedema = {name: _mean(cases, name, "t2f", "core") / _mean(cases, name, "t2f", "ED") for name in DOMAINS}
    assert core_vs_oedema["source"] < 0.8
    assert core_vs_oedema["pediatric"] > 1.0


def test_unknown_domain_is_a_case_error(tmp_path):
    with pytest.raises(CaseError, match="unknown domain 'adult'") as err:
        make("brats-phantom", tmp_path, domain="adult")
    assert err.value.accepted == "source, lowfield, pediatric"
    with pytest.raises(CaseError, match="n >= 1"):
        make("brats-phantom", tmp_path, n=0)
