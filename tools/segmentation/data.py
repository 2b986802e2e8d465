"""Cases as network tensors: normalised 4-sequence input on the fixed grid plus [ET, TC, WT] targets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from macro.case import Case, load_case
from macro.data.brats import convention_for, region_stack
from macro.tools.segmentation.model import Window, prepare, to_grid


@dataclass
class Sample:
    name: str
    case: Case
    image: np.ndarray
    target: np.ndarray | None
    window: Window
    labels: np.ndarray | None


def load_sample(folder: Path, grid: tuple[int, ...]) -> Sample:
    case = load_case(folder)
    image, window = prepare(case.image, grid)
    target = None
    if case.labels is not None:
        target = to_grid(region_stack(case.labels, convention_for(case.label_path.name)), window, grid)
    return Sample(Path(folder).name, case, image, target, window, case.labels)


def region_truth(sample: Sample) -> np.ndarray | None:
    """[ET, TC, WT] ground truth in the case's own voxel grid (for Dice at full extent)."""
    if sample.labels is None:
        return None
    return region_stack(sample.labels, convention_for(sample.case.label_path.name)).astype(bool)
