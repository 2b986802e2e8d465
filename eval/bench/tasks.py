"""MACRO-Bench tasks: generated from phantom cases by seed, each with ground truth and a checker.

A family names the tool chain a careful agent would use (for process metrics), but success is judged on the
answer text alone: an agent that gets the right number another way still succeeds. Splits: ``train`` (for
experience: memory, mining, later GRPO), ``held_out`` (same domains and phrasings, other cases) and ``ood``
(a scanner or acquisition shift not seen in training, and question templates never used in train or held-out).

A family is skipped, with a note in the report, when a tool it needs is not registered.
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

SPLITS = ("train", "held_out", "ood")
SPLIT_SEED = {"train": 50_000, "held_out": 60_000, "ood": 70_000}
REGION_NAMES = {"TC": "tumour core", "WT": "whole tumour"}
VOLUME_TOLERANCE = 0.25


@dataclass
class Task:
    id: str
    family: str
    split: str
    case: list[str]
    question: str
    truth: dict
    expected: list[dict]
    modality: str | None = None
    kind: str = "single"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    needs: tuple[str, ...]
    build: Callable[[Path, str, int, int], list[Task]]
    check: Callable[[Task, str], bool]
    templates: dict = field(default_factory=dict)


def _rng(split: str, seed: int, family: str) -> random.Random:
    return random.Random(f"{family}/{split}/{seed}")


# ---- tumour volumes (segmentation family) ----------------------------------------------------------------------

VOLUME_TEMPLATES = {
    "seen": ["How large is the {name}?", "What is the {name} volume in mL?", "Measure the {name} volume."],
    "ood": ["Quantify the {name} burden for me.", "Roughly how many millilitres does the {name} occupy?"],
}
SHIFTED_TEMPLATES = {
    "seen": ["This scan comes from a low-field scanner. How large is the {name}?",
             "Acquired on a different scanner than usual: what is the {name} volume?"],
    "ood": ["Paediatric patient, scanned with a protocol we rarely see. Give the {name} volume in mL.",
            "The contrast of this study looks unusual. How big is the {name}?"],
}


def _volume_tasks(family: str, templates: dict, domains: dict, root: Path, split: str, seed: int, n: int) -> list[Task]:
    from macro.case import brats_files
    from macro.data import make

    rng = _rng(split, seed, family)
    folders = make("brats-phantom", root / f"{family}-{split}-{seed}", n=n, seed=SPLIT_SEED[split] + 1000 * seed + hash_family(family),
                   domain=domains[split])
    tasks = []
    for k, folder in enumerate(folders):
        region = rng.choice(list(REGION_NAMES))
        truth = json.loads((folder / "truth.json").read_text())["volumes_ml"][region]
        question = rng.choice(templates["ood" if split == "ood" else "seen"]).format(name=REGION_NAMES[region])
        adapt = {} if domains[split] == "source" else {"adapt": ("vista", "tent")}
        tasks.append(Task(f"{family}/{split}/{seed}/{k}", family, split, [str(p) for p in brats_files(folder)[0]], question,
                          {"region": region, "volume_ml": truth},
                          [{"name": "segment_brain_tumor", "args": adapt}, {"name": "measure_volume", "args": {"region": region}}],
                          kind="single" if family == "tumour-volume" else "multi"))
    return tasks


def hash_family(name: str) -> int:
    return sum(map(ord, name)) % 997


_ML = r"(\d+(?:\.\d+)?)\s*mL"


def reported_volume(answer: str, region: str) -> float | None:
    """The first volume the answer gives for a region: "WT 12.3 mL", "whole tumour (WT) volume: 12.3 mL"."""
    name = REGION_NAMES.get(region, region)
    for pattern in (rf"\b{region}\b\)?[^.;\d]{{0,24}}?{_ML}", rf"{re.escape(name)}[^.;\d]{{0,24}}?{_ML}"):
        match = re.search(pattern, answer, flags=re.IGNORECASE)
        if match:
            return float(match.group(1))
    return None


def check_volume(task: Task, answer: str) -> bool:
    got = reported_volume(answer, task.truth["region"])
    return got is not None and abs(got - task.truth["volume_ml"]) <= VOLUME_TOLERANCE * task.truth["volume_ml"]


def build_tumour_volume(root: Path, split: str, seed: int, n: int) -> list[Task]:
    return _volume_tasks("tumour-volume", VOLUME_TEMPLATES, {"train": "source", "held_out": "source", "ood": "pediatric"}, root, split, seed, n)


def build_shifted_volume(root: Path, split: str, seed: int, n: int) -> list[Task]:
    return _volume_tasks("shifted-volume", SHIFTED_TEMPLATES, {"train": "lowfield", "held_out": "lowfield", "ood": "pediatric"}, root, split, seed, n)


# ---- classification families --------------------------------------------------------------------------------

LESION_TEMPLATES = {
    "seen": ["What kind of lesion is this?", "Classify this skin lesion.", "Is this mole benign or malignant? Name the most likely class."],
    "ood": ["Which dermoscopic diagnosis fits this image best?", "Give me the single most probable lesion category for this dermatoscopy."],
}
FINDING_TEMPLATES = {
    "seen": ["Is there {article} {finding} on this chest X-ray?", "Does this radiograph show {article} {finding}?"],
    "ood": ["Any sign of {finding} on this film? Answer yes or no.", "Would a radiologist call {finding} on this CXR?"],
}


def _labelled_images(dataset: str, root: Path, split: str, seed: int, n: int, family: str, size: int) -> list[tuple[Path, dict]]:
    from macro.data import make

    folder = root / f"{family}-{split}-{seed}"
    paths = make(dataset, folder, n=n, seed=SPLIT_SEED[split] + 1000 * seed + hash_family(family), size=size)
    with open(folder / "labels.csv") as fh:
        rows = {row["image"]: row for row in csv.DictReader(fh)}
    return [(p, {k: int(v) for k, v in rows[p.name].items() if k != "image"}) for p in paths]


def build_lesion_class(root: Path, split: str, seed: int, n: int) -> list[Task]:
    rng = _rng(split, seed, "lesion-class")
    # OOD: a different camera resolution (the classifier was trained at 96 px)
    images = _labelled_images("derm-phantom", root, split, seed, n, "lesion-class", 160 if split == "ood" else 96)
    return [Task(f"lesion-class/{split}/{seed}/{k}", "lesion-class", split, [str(p)], rng.choice(LESION_TEMPLATES["ood" if split == "ood" else "seen"]),
                 {"label": next(c for c, v in labels.items() if v)}, [{"name": "classify_lesion", "args": {}}], modality="dermoscopy")
            for k, (p, labels) in enumerate(images)]


def first_class(answer: str, classes) -> str | None:
    hits = [(m.start(), c) for c in classes for m in [re.search(rf"\b{c}\b", answer)] if m]
    return min(hits)[1] if hits else None


def check_lesion(task: Task, answer: str) -> bool:
    from macro.data.derm import CLASSES

    return first_class(answer, CLASSES) == task.truth["label"]


def build_cxr_finding(root: Path, split: str, seed: int, n: int) -> list[Task]:
    rng = _rng(split, seed, "cxr-finding")
    images = _labelled_images("cxr-phantom", root, split, seed, n, "cxr-finding", 160 if split == "ood" else 96)
    tasks = []
    for k, (p, labels) in enumerate(images):
        finding = rng.choice([c for c, v in labels.items() if v] if rng.random() < 0.5 and any(labels.values()) else list(labels))
        question = rng.choice(FINDING_TEMPLATES["ood" if split == "ood" else "seen"]).format(
            finding=finding.lower(), article="an" if finding[0] in "AEIOU" else "a")
        tasks.append(Task(f"cxr-finding/{split}/{seed}/{k}", "cxr-finding", split, [str(p)], question,
                          {"finding": finding, "present": bool(labels[finding])}, [{"name": "classify_findings", "args": {}}], modality="xray"))
    return tasks


def said_present(answer: str, finding: str) -> bool | None:
    """The answer's verdict on a finding: an explicit yes/no first, else whether the finding is listed above 0.5."""
    head = answer.strip().lower()
    if re.match(r"^(yes|present)\b", head):
        return True
    if re.match(r"^(no|absent)\b", head):
        return False
    listed = re.search(r"above 0\.5:\s*([^()]*)\(", answer)
    if listed:
        return finding.lower() in listed.group(1).lower()
    return None


def check_finding(task: Task, answer: str) -> bool:
    return said_present(answer, task.truth["finding"]) == task.truth["present"]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("tumour-volume", "single", ("segment_brain_tumor", "measure_volume"), build_tumour_volume, check_volume, VOLUME_TEMPLATES),
    Family("shifted-volume", "multi", ("segment_brain_tumor", "measure_volume"), build_shifted_volume, check_volume, SHIFTED_TEMPLATES),
    Family("lesion-class", "single", ("classify_lesion",), build_lesion_class, check_lesion, LESION_TEMPLATES),
    Family("cxr-finding", "single", ("classify_findings",), build_cxr_finding, check_finding, FINDING_TEMPLATES),
)}
