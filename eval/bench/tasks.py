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
from dataclasses import asdict, dataclass
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str
    needs: tuple[str, ...]
    build: Callable[[Path, str, int, int], list[Task]]
    check: Callable[[Task, str], bool]


def _rng(split: str, seed: int, family: str) -> random.Random:
    return random.Random(f"{family}/{split}/{seed}")


# ---- tumour volumes (segmentation family) ----------------------------------------------------------------------

VOLUME_TEMPLATES = {
    "seen": ["How large is the {name}?", "What is the {name} volume in mL?", "Measure the {name} volume."],
    "ood": ["Quantify the {name} burden for me.", "Roughly how many millilitres does the {name} occupy?"],
}
SHIFTED_TEMPLATES = {
    "seen": [
        "This scan comes from a low-field scanner. How large is the {name}?",
        "Acquired on a different scanner than usual: what is the {name} volume?",
    ],
    "ood": [
        "Paediatric patient, scanned with a protocol we rarely see. Give the {name} volume in mL.",
        "The contrast of this study looks unusual. How big is the {name}?",
    ],
}


def _volume_tasks(family: str, templates: dict, domains: dict, root: Path, split: str, seed: int, n: int) -> list[Task]:
    from macro.case import brats_files
    from macro.data import make

    rng = _rng(split, seed, family)
    folders = make(
        "brats-phantom",
        root / f"{family}-{split}-{seed}",
        n=n,
        seed=SPLIT_SEED[split] + 1000 * seed + hash_family(family),
        domain=domains[split],
    )
    tasks = []
    for k, folder in enumerate(folders):
        region = rng.choice(list(REGION_NAMES))
        truth = json.loads((folder / "truth.json").read_text())["volumes_ml"][region]
        question = _pick(templates, split, rng).format(name=REGION_NAMES[region])
        adapt = {} if domains[split] == "source" else {"adapt": ("vista", "tent")}
        tasks.append(
            Task(
                f"{family}/{split}/{seed}/{k}",
                family,
                split,
                [str(p) for p in brats_files(folder)[0]],
                question,
                {"region": region, "volume_ml": truth},
                [
                    {"name": "segment_brain_tumor", "args": adapt},
                    {"name": "measure_volume", "args": {"region": region}},
                ],
            )
        )
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
    return _volume_tasks(
        "tumour-volume",
        VOLUME_TEMPLATES,
        {"train": "source", "held_out": "source", "ood": "pediatric"},
        root,
        split,
        seed,
        n,
    )


def build_shifted_volume(root: Path, split: str, seed: int, n: int) -> list[Task]:
    return _volume_tasks(
        "shifted-volume",
        SHIFTED_TEMPLATES,
        {"train": "lowfield", "held_out": "lowfield", "ood": "pediatric"},
        root,
        split,
        seed,
        n,
    )


# ---- classification families --------------------------------------------------------------------------------

LESION_TEMPLATES = {
    "seen": [
        "What kind of lesion is this?",
        "Classify this skin lesion.",
        "Is this mole benign or malignant? Name the most likely class.",
    ],
    "ood": [
        "Which dermoscopic diagnosis fits this image best?",
        "Give me the single most probable lesion category for this dermatoscopy.",
    ],
}
FINDING_TEMPLATES = {
    "seen": ["Is there {article} {finding} on this chest X-ray?", "Does this radiograph show {article} {finding}?"],
    "ood": ["Any sign of {finding} on this film? Answer yes or no.", "Would a radiologist call {finding} on this CXR?"],
}


def _labelled_images(
    dataset: str, root: Path, split: str, seed: int, n: int, family: str, size: int
) -> list[tuple[Path, dict]]:
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
    return [
        Task(
            f"lesion-class/{split}/{seed}/{k}",
            "lesion-class",
            split,
            [str(p)],
            _pick(LESION_TEMPLATES, split, rng),
            {"label": next(c for c, v in labels.items() if v)},
            [{"name": "classify_lesion", "args": {}}],
            modality="dermoscopy",
        )
        for k, (p, labels) in enumerate(images)
    ]


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
        finding = rng.choice(
            [c for c, v in labels.items() if v] if rng.random() < 0.5 and any(labels.values()) else list(labels)
        )
        question = _pick(FINDING_TEMPLATES, split, rng).format(
            finding=finding.lower(), article="an" if finding[0] in "AEIOU" else "a"
        )
        tasks.append(
            Task(
                f"cxr-finding/{split}/{seed}/{k}",
                "cxr-finding",
                split,
                [str(p)],
                question,
                {"finding": finding, "present": bool(labels[finding])},
                [{"name": "classify_findings", "args": {}}],
                modality="xray",
            )
        )
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


# ---- anomaly screening --------------------------------------------------------------------------------------

ANOMALY_TEMPLATES = {
    "seen": [
        "Is there anything anomalous in this image?",
        "Screen this image for anomalies.",
        "Does this slice look abnormal?",
    ],
    "ood": [
        "Could you check whether anything unusual shows up here?",
        "Flag this image if it deviates from normal anatomy.",
    ],
}
OOD_GAMMA = 0.7  # outside the stream's own contrast range (gamma 0.85-1.15): a scanner/window shift never seen


def build_anomaly_screen(root: Path, split: str, seed: int, n: int) -> list[Task]:
    import shutil

    import numpy as np
    from PIL import Image

    from macro.data import make

    rng = _rng(split, seed, "anomaly-screen")
    folder = root / f"anomaly-screen-{split}-{seed}"
    per_task = max(1, -(-n // 12))
    make(
        "anomaly-stream",
        folder,
        n=2,
        n_test=per_task,
        seed=SPLIT_SEED[split] + 1000 * seed + hash_family("anomaly-screen"),
    )
    images = sorted(p for p in folder.glob("*/test/*/*.png"))
    normal = [p for p in images if p.parent.name == "good"]
    abnormal = [p for p in images if p.parent.name != "good"]
    picked = [(p, False) for p in rng.sample(normal, min(len(normal), n - n // 2))] + [
        (p, True) for p in rng.sample(abnormal, min(len(abnormal), n // 2))
    ]
    rng.shuffle(picked)
    tasks = []
    for k, (path, anomalous) in enumerate(picked):
        if split == "ood":
            shifted = folder / "ood" / f"{k:04d}.png"
            shifted.parent.mkdir(exist_ok=True)
            pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
            Image.fromarray(np.round(255 * pixels**OOD_GAMMA).astype(np.uint8)).save(shifted)
            shutil.copy(path.with_suffix(".json"), shifted.with_suffix(".json"))
            path = shifted
        tasks.append(
            Task(
                f"anomaly-screen/{split}/{seed}/{k}",
                "anomaly-screen",
                split,
                [str(path)],
                _pick(ANOMALY_TEMPLATES, split, rng),
                {"anomalous": anomalous},
                [{"name": "score_anomaly", "args": {}}],
            )
        )
    return tasks


def said_anomalous(answer: str) -> bool | None:
    """The answer's verdict: an explicit yes/no first, else the anomaly tool's verdict quoted in it."""
    head = answer.strip().lower()
    if re.match(r"^(yes|abnormal|anomalous)\b", head):
        return True
    if re.match(r"^(no|normal)\b", head):
        return False
    if "within normal limits" in head:
        return False
    if re.search(r"\banomalous\b", head):
        return True
    return None


def check_anomaly(task: Task, answer: str) -> bool:
    return said_anomalous(answer) == task.truth["anomalous"]


def _pick(templates: dict, split: str, rng: random.Random) -> str:
    return rng.choice(templates["ood" if split == "ood" else "seen"])


# ---- stepwise chest X-ray diagnosis (Step-CoT) ----------------------------------------------------------------

DX_TEMPLATES = {
    "seen": [
        "What is the most likely diagnosis? Reason step by step.",
        "Walk me through this chest X-ray step by step and give a diagnosis.",
    ],
    "ood": [
        "Think it through in stages: what would you conclude about this film?",
        "Which diagnosis does a stepwise read of this CXR support?",
    ],
}
FINDINGS_DX_TEMPLATES = {
    "seen": [
        "Check this X-ray for findings, then reason step by step to a diagnosis.",
        "List any findings on this radiograph and explain the diagnosis step by step.",
    ],
    "ood": [
        "First tell me what the film shows, then take me through your diagnostic reasoning in stages.",
        "Screen the CXR for findings and conclude with a reasoned diagnosis.",
    ],
}


def _stepcot_tasks(
    family: str, templates: dict, expected: list[dict], root: Path, split: str, seed: int, n: int
) -> list[Task]:
    from macro.data import make
    from macro.data.stepcot import load_data_json

    rng = _rng(split, seed, family)
    folder = root / f"{family}-{split}-{seed}"
    # OOD: another detector resolution (the models were trained at the default size)
    make(
        "stepcot-phantom",
        folder,
        n=n,
        seed=SPLIT_SEED[split] + 1000 * seed + hash_family(family),
        **({"size": 320} if split == "ood" else {}),
    )
    records = load_data_json(folder / "data.json")
    return [
        Task(
            f"{family}/{split}/{seed}/{k}",
            family,
            split,
            [str(r.image_file())],
            _pick(templates, split, rng),
            {"diagnosis": r.vqa_chain[-1].answer, "options": list(r.vqa_chain[-1].options)},
            expected,
            modality="xray",
        )
        for k, r in enumerate(records)
    ]


def build_stepwise_dx(root: Path, split: str, seed: int, n: int) -> list[Task]:
    return _stepcot_tasks("stepwise-dx", DX_TEMPLATES, [{"name": "answer_stepwise", "args": {}}], root, split, seed, n)


def build_findings_dx(root: Path, split: str, seed: int, n: int) -> list[Task]:
    return _stepcot_tasks(
        "findings-then-dx",
        FINDINGS_DX_TEMPLATES,
        [{"name": "classify_findings", "args": {}}, {"name": "answer_stepwise", "args": {}}],
        root,
        split,
        seed,
        n,
    )


def stated_diagnosis(answer: str, options: list[str]) -> str | None:
    """The diagnosis the answer commits to: the stepwise tool's "Diagnosis: X." if quoted, else the first option
    the answer names."""
    quoted = re.findall(r"Diagnosis:\s*([^.]+)\.", answer)
    if quoted:
        return quoted[-1].strip()
    hits = [(m.start(), o) for o in options for m in [re.search(re.escape(o), answer, flags=re.IGNORECASE)] if m]
    return min(hits)[1] if hits else None


def check_diagnosis(task: Task, answer: str) -> bool:
    said = stated_diagnosis(answer, task.truth["options"])
    return said is not None and said.lower() == task.truth["diagnosis"].lower()


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("tumour-volume", "single", ("segment_brain_tumor", "measure_volume"), build_tumour_volume, check_volume),
        Family(
            "shifted-volume", "multi", ("segment_brain_tumor", "measure_volume"), build_shifted_volume, check_volume
        ),
        Family("lesion-class", "single", ("classify_lesion",), build_lesion_class, check_lesion),
        Family("cxr-finding", "single", ("classify_findings",), build_cxr_finding, check_finding),
        Family("anomaly-screen", "single", ("score_anomaly",), build_anomaly_screen, check_anomaly),
        Family("stepwise-dx", "single", ("answer_stepwise",), build_stepwise_dx, check_diagnosis),
        Family(
            "findings-then-dx", "multi", ("classify_findings", "answer_stepwise"), build_findings_dx, check_diagnosis
        ),
    )
}
