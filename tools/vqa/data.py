"""Step-CoT training data as tensors: cached frozen image features, labels with -1 for invalid steps, the label
maps and the step-prompt embeddings, from a phantom made by seed or from a real Step-CoT folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from macro.data import stepcot
from macro.tools.vqa.encoders import image_features, step_prompts, text_embeddings


@dataclass
class StepData:
    features: dict[str, torch.Tensor]  # split -> (N, 1600) float32
    labels: dict[str, np.ndarray]  # split -> (N, 7) int64, -1 where the answer is not an option
    options: tuple[tuple[str, ...], ...]
    questions: tuple[str, ...]
    prompts: torch.Tensor  # (7, 384) MiniLM embeddings of the step prompts
    source: dict
    files: dict[str, list[Path]]  # split -> the image files, in feature order

    @property
    def n_classes(self) -> tuple[int, ...]:
        return tuple(len(o) for o in self.options)

    def labels_t(self, split: str) -> torch.Tensor:
        return torch.as_tensor(self.labels[split])


def phantom_folder(data_root: Path, n: int, seed: int) -> Path:
    """``<data_root>/stepcot-phantom-g<generator>-n<N>-s<seed>``, built on first use (an unfinished build lacks
    data.json). The generator's version is in the name, so a phantom made by an older generator is never reused."""
    folder = Path(data_root) / f"stepcot-phantom-g{stepcot.GENERATOR}-n{n}-s{seed}"
    done = folder / "data.json"
    if not (done.is_file() and len(json.loads(done.read_text())) == n):
        stepcot.make_stepcot_phantom(folder, n=n, seed=seed)
    return folder


def load_folder(folder: Path, progress: bool = True) -> StepData:
    """A Step-CoT folder (real or phantom): the three splits, label maps from the training split, and features."""
    splits = stepcot.load_stepcot(folder)
    options = stepcot.label_maps(splits["train"])
    questions = tuple(splits["train"][0].vqa_chain[k].question for k in range(stepcot.N_STEPS))
    cache = folder / "cache"
    features, labels, files = {}, {}, {}
    for split, records in splits.items():
        files[split] = [r.image_file() for r in records]
        features[split] = torch.from_numpy(image_features(files[split], cache, progress=progress))
        labels[split] = stepcot.encode_labels(records, options)[0]
    prompts = torch.from_numpy(text_embeddings(step_prompts(questions, options), cache))
    source = {"folder": str(folder), "sizes": {s: len(r) for s, r in splits.items()}}
    return StepData(features, labels, options, questions, prompts, source, files)
