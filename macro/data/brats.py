"""Real BraTS data: find the case folders of a dataset and turn label maps into the model's region targets.

Why: a segmentation model predicts the nested regions ET, TC and WT, but the raw label values depend on the
challenge. Adult glioma (GLI) and its relatives (SSA, MEN, ...) use 1 = NCR, 2 = ED, 3 = ET since 2023 and
4 = ET before (label 3 was unused then), so ``gli`` accepts both; the paediatric challenge (PED) numbers its
compartments differently, 1 = ET, 2 = NET, 3 = CC, 4 = ED, so the same value 4 is ET in one and oedema in the other.
Reading a PED case with the GLI table would silently swap oedema into the enhancing tumour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from macro.case import brats_files
from macro.errors import CaseError

CONVENTIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "gli": {"ET": (3, 4), "TC": (1, 3, 4), "WT": (1, 2, 3, 4)},
    "ped": {"ET": (1,), "TC": (1, 2, 3), "WT": (1, 2, 3, 4)},
}
REGION_ORDER = ("ET", "TC", "WT")  # channel order of the segmentation model's target
PED_LABELS = {1: "ET", 2: "NET", 3: "CC", 4: "ED"}


def convention_for(name: str | Path) -> str:
    """``ped`` for a BraTS-PED case, folder or file name (any case), else ``gli``."""
    return "ped" if "brats-ped" in str(name).lower() else "gli"


def region_masks(labels: np.ndarray, convention: str = "gli") -> dict[str, np.ndarray]:
    """Boolean ET, TC and WT masks of a raw label map read in ``convention``."""
    regions = CONVENTIONS.get(convention)
    if regions is None:
        raise CaseError(None, f"unknown label convention {convention!r}", accepted=", ".join(CONVENTIONS))
    return {region: np.isin(labels, regions[region]) for region in REGION_ORDER}


def region_stack(labels: np.ndarray, convention: str = "gli") -> np.ndarray:
    """Float32 array of shape (3, *labels.shape), channels [ET, TC, WT]: the multi-label training target."""
    masks = region_masks(labels, convention)
    return np.stack([masks[region] for region in REGION_ORDER]).astype(np.float32)


def find_cases(root: str | Path) -> list[Path]:
    """Every BraTS case folder at or under ``root`` (2023+ or older file names), sorted; hidden folders are skipped.

    A folder with only some of the four sequences raises (via :func:`macro.case.brats_files`): a half-copied case
    should stop a run, not shrink the dataset unnoticed.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CaseError(root, "dataset folder not found")
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    cases = sorted(p for p in folders if not _hidden(p, root) and brats_files(p) is not None)
    if not cases:
        raise CaseError(
            root,
            "no BraTS case folders found",
            accepted="folders of *-t1n/-t1c/-t2w/-t2f[-seg].nii.gz or *_t1/_t1ce/_t2/_flair[_seg].nii.gz",
        )
    return cases


def _hidden(folder: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in folder.relative_to(root).parts)
