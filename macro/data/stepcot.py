"""Step-CoT data: the record schema, loaders for the dataset's real files, and the ``stepcot-phantom`` generator.

Why: Step-CoT (``shared/research/agent_methods.md`` section 2) answers a chest X-ray question through seven fixed
diagnostic steps. The real release (``train.xlsx``, ``val.xlsx``, ``test.xlsx``, ``data.json``, ``images/``,
``images_2/``) cannot be downloaded here, so the loaders read that layout and the phantom writes the same layout
from seeded chest radiographs whose seven answers follow a clinical chain.

Record schema (one per image): ``patient_id``, ``image_path`` (relative to the dataset folder; a bare file name is
looked up in ``images/`` then ``images_2/``), ``origin``, ``report`` and ``vqa_chain``: seven objects with
``step`` ("Step 1" ... "Step 7"), ``question``, ``options`` (strings), ``answer`` (one option) and ``reasoning``.
The split ``.xlsx`` files list a split's rows: a row carries its own ``vqa_chain`` cell (JSON text), or names a
``data.json`` record by ``image_path`` or ``patient_id``. The card does not document the ``.xlsx`` columns, so both
forms are read. Label maps come from the data (each step's options in first-seen order); an answer outside its
options is masked out (label -1), as the repo's valid mask does.

Phantom (``macro data make stepcot-phantom --out DIR --n N --seed S``), drawn in step order so every answer
depends on the ones before it (``CHAIN`` holds the conditional tables):

    1. density      : No abnormality .25, Increased opacity .47, Decreased opacity .10, Mixed opacity .18
    2. distribution : given density (none when normal; a pneumothorax is focal)
    3. pattern      : given density and distribution (mixed density is a cavity, decreased a pleural air collection)
    4. location     : given pattern and distribution (cavities favour the upper zones, consolidation the lower)
    5. morphology   : given pattern and distribution
    6. secondary    : given pattern (cardiomegaly with interstitial oedema, air bronchograms with consolidation, ...)
    7. diagnosis    : a function of steps 1-6 (:func:`diagnose`), never drawn on its own

Each answer is rendered with the sign a reader looks for, on the chest of :mod:`macro.data.cxr` (its patient,
anatomy, vessel markings, bones, effusion and pneumothorax drawing): consolidation as a dense patch with an ill
(or fissure-sharp) edge, nodules and masses as round opacities (smooth or lobulated), a cavity as a ring with a
lucent centre, interstitial oedema as bilateral reticular haze, volume loss as a raised dome with the mediastinum
pulled over, a mediastinal shift as the heart and trachea pushed away from the abnormal side (pleural signs sit
on that side). Lesion size, density and edge vary and the patient varies as in ``cxr-phantom``, so small or faint
lesions stay ambiguous and accuracy is not 100 %.
Reasoning sentences are templated from the drawn answers and the lesion's side. Lesions are drawn here
(``cxr.render`` draws its findings at random places, so it cannot place one in a named zone); the final image
comes from ``cxr.composite``, the same compositing as ``cxr-phantom``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from macro.data import register
from macro.data.cxr import _Chest, _effusion, _patient, _pneumothorax, _round_opacity, _sigmoid, composite
from macro.data.labelled import _check_int, case_rng, smooth_field
from macro.errors import CaseError

DATASET = "stepcot-phantom"
GENERATOR = 2  # raised whenever the phantom's images or records change (2: pleural signs on the abnormal side)
SIZE = 128
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
STEP_NAMES = (
    "Abnormal radiodensity",
    "Lesion distribution",
    "Radiographic pattern",
    "Anatomical location",
    "Morphologic features",
    "Secondary signs",
    "Diagnosis",
)
N_STEPS = len(STEP_NAMES)
IMAGE_DIRS = ("images", "images_2")

QUESTIONS = (
    "Is there abnormal radiodensity in the lung fields?",
    "What is the distribution of the abnormality?",
    "What is the radiographic pattern of the abnormality?",
    "Where is the abnormality located?",
    "What are the morphologic features of the lesion?",
    "Are there secondary or associated signs?",
    "What is the most likely diagnosis?",
)
OPTIONS = (
    ("No abnormality", "Increased opacity", "Decreased opacity", "Mixed opacity"),
    ("None", "Focal", "Multifocal", "Diffuse"),
    ("None", "Consolidation", "Nodule/Mass", "Interstitial", "Cavity", "Pleural"),
    (
        "None",
        "Right upper zone",
        "Right lower zone",
        "Left upper zone",
        "Left lower zone",
        "Bilateral",
        "Pleura/Chest wall",
    ),
    ("None", "Well-circumscribed", "Ill-defined", "Lobulated", "Thick-walled"),
    ("None", "Pleural effusion", "Cardiomegaly", "Volume loss", "Pneumothorax", "Air bronchogram", "Mediastinal shift"),
    (
        "Normal",
        "Pneumonia",
        "Tuberculosis",
        "Lung abscess",
        "Lung cancer",
        "Metastases",
        "Heart failure",
        "Pleural effusion",
        "Pneumothorax",
    ),
)


# ---------------------------------------------------------------- schema


@dataclass(frozen=True)
class ChainStep:
    step: str
    question: str
    options: tuple[str, ...]
    answer: str
    reasoning: str


@dataclass(frozen=True)
class StepCoTRecord:
    """One image and its seven-step chain; ``root`` is the dataset folder ``image_path`` is relative to."""

    patient_id: str
    image_path: str
    origin: str
    report: str
    vqa_chain: tuple[ChainStep, ...]
    root: Path

    def image_file(self) -> Path:
        """The image on disk: ``root/image_path``, else the bare name in ``images/`` or ``images_2/``."""
        direct = self.root / self.image_path
        if direct.is_file():
            return direct
        for folder in IMAGE_DIRS:
            candidate = self.root / folder / Path(self.image_path).name
            if candidate.is_file():
                return candidate
        raise CaseError(
            direct,
            f"image of patient {self.patient_id} not found",
            accepted=f"a path under {self.root} or in {'/'.join(IMAGE_DIRS)}",
        )

    def to_json(self) -> dict:
        return {
            "patient_id": self.patient_id,
            "image_path": self.image_path,
            "origin": self.origin,
            "report": self.report,
            "vqa_chain": [
                {
                    "step": s.step,
                    "question": s.question,
                    "options": list(s.options),
                    "answer": s.answer,
                    "reasoning": s.reasoning,
                }
                for s in self.vqa_chain
            ],
        }


def parse_record(obj, root: Path, where: Path, item: str) -> StepCoTRecord:
    """One record from parsed JSON; ``where`` and ``item`` (e.g. "record 3", "row 5") name it in every error."""
    if not isinstance(obj, dict):
        raise CaseError(where, f"{item}: expected an object, got {type(obj).__name__}")
    for key in ("patient_id", "image_path", "vqa_chain"):
        if key not in obj:
            raise CaseError(
                where, f"{item}: missing field {key!r}", accepted="patient_id, image_path, origin, report, vqa_chain"
            )
    chain = obj["vqa_chain"]
    if isinstance(chain, str):
        try:
            chain = json.loads(chain)
        except json.JSONDecodeError as exc:
            raise CaseError(where, f"{item}: vqa_chain is not valid JSON ({exc})") from None
    if not isinstance(chain, list) or len(chain) != N_STEPS:
        raise CaseError(
            where,
            f"{item}: vqa_chain must be a list of {N_STEPS} steps, got "
            f"{len(chain) if isinstance(chain, list) else type(chain).__name__}",
        )
    steps = []
    for k, entry in enumerate(chain):
        here = f"{item}, step {k + 1}"
        if not isinstance(entry, dict):
            raise CaseError(where, f"{here}: expected an object")
        missing = [key for key in ("question", "options", "answer") if key not in entry]
        if missing:
            raise CaseError(
                where, f"{here}: missing {', '.join(missing)}", accepted="step, question, options, answer, reasoning"
            )
        options = entry["options"]
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            raise CaseError(where, f"{here}: options must be a non-empty list of strings")
        if not isinstance(entry["answer"], str) or not isinstance(entry["question"], str):
            raise CaseError(where, f"{here}: question and answer must be strings")
        steps.append(
            ChainStep(
                str(entry.get("step", f"Step {k + 1}")),
                entry["question"],
                tuple(options),
                entry["answer"],
                str(entry.get("reasoning") or ""),
            )
        )
    return StepCoTRecord(
        str(obj["patient_id"]),
        str(obj["image_path"]),
        str(obj.get("origin") or ""),
        str(obj.get("report") or ""),
        tuple(steps),
        root,
    )


def load_data_json(path: str | Path) -> list[StepCoTRecord]:
    """``data.json``: a list of records (or ``{"data": [...]}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CaseError(path, "file not found", accepted="the Step-CoT data.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaseError(path, f"not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise CaseError(path, "expected a list of records")
    return [parse_record(obj, path.parent, path, f"record {i}") for i, obj in enumerate(data)]


def load_split(root: str | Path, split: str) -> list[StepCoTRecord]:
    """The records of ``<root>/<split>.xlsx``; rows without a ``vqa_chain`` cell are looked up in ``data.json``."""
    import pandas as pd

    root = Path(root)
    path = root / f"{split}.xlsx"
    try:
        table = pd.read_excel(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise CaseError(path, "split file not found", accepted=", ".join(f"{s}.xlsx" for s in SPLITS)) from None
    except Exception as exc:  # openpyxl raises several types for a file that is not a workbook
        raise CaseError(path, f"not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from None
    columns = set(table.columns)
    if not {"patient_id", "image_path"} & columns:
        raise CaseError(path, f"no patient_id or image_path column (columns: {', '.join(map(str, table.columns))})")
    index = None
    records = []
    for i, row in enumerate(table.to_dict("records")):
        item = f"row {i + 2}"  # spreadsheet numbering: the header is row 1
        if row.get("vqa_chain"):
            records.append(parse_record(row, root, path, item))
            continue
        if index is None:
            known = load_data_json(root / "data.json")
            index = {**{r.patient_id: r for r in known}, **{r.image_path: r for r in known}}
        key = row.get("image_path") or row.get("patient_id")
        if key not in index:
            raise CaseError(path, f"{item}: {key!r} is neither in data.json nor has a vqa_chain cell")
        records.append(index[key])
    return records


def load_stepcot(root: str | Path) -> dict[str, list[StepCoTRecord]]:
    """All three official splits of a Step-CoT folder."""
    return {split: load_split(root, split) for split in SPLITS}


def label_maps(records: list[StepCoTRecord]) -> tuple[tuple[str, ...], ...]:
    """Each step's options in first-seen order over the records (the notes: build the label maps from the data)."""
    maps: list[dict[str, None]] = [{} for _ in range(N_STEPS)]
    for record in records:
        for k, step in enumerate(record.vqa_chain):
            maps[k].update(dict.fromkeys(step.options))
    return tuple(tuple(m) for m in maps)


def encode_labels(records: list[StepCoTRecord], maps: tuple[tuple[str, ...], ...]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 7) int64 option indices (-1 where the answer is not an option) and the (N, 7) bool valid mask."""
    lookup = [{option: i for i, option in enumerate(m)} for m in maps]
    labels = np.array(
        [[lookup[k].get(step.answer, -1) for k, step in enumerate(r.vqa_chain)] for r in records], dtype=np.int64
    )
    labels = labels.reshape(len(records), N_STEPS)
    return labels, labels >= 0


# ---------------------------------------------------------------- the chain of the phantom

UPPER_ZONE, LOWER_ZONE = -0.17, -0.07  # thorax-frame y: upper-zone lesions sit above the first, lower below the second
ZONES = {
    "Right upper zone": (-1, "upper"),
    "Right lower zone": (-1, "lower"),
    "Left upper zone": (1, "upper"),
    "Left lower zone": (1, "lower"),
}


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    names = list(table)
    p = np.array([table[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _zone(rng: np.random.Generator, upper: float) -> str:
    side = "Right" if rng.random() < 0.5 else "Left"
    return f"{side} {'upper' if rng.random() < upper else 'lower'} zone"


def draw_chain(rng: np.random.Generator) -> dict[str, str]:
    """Steps 1-6 drawn in order, each from a table conditioned on the answers before it; then the diagnosis."""
    a = {
        "density": _pick(
            rng, {"No abnormality": 0.25, "Increased opacity": 0.47, "Decreased opacity": 0.10, "Mixed opacity": 0.18}
        )
    }
    if a["density"] == "No abnormality":
        a.update(distribution="None", pattern="None", location="None", morphology="None", secondary="None")
    else:
        a["distribution"] = {
            "Increased opacity": lambda: _pick(rng, {"Focal": 0.55, "Multifocal": 0.22, "Diffuse": 0.23}),
            "Decreased opacity": lambda: "Focal",
            "Mixed opacity": lambda: _pick(rng, {"Focal": 0.8, "Multifocal": 0.2}),
        }[a["density"]]()
        if a["density"] == "Mixed opacity":
            a["pattern"] = "Cavity"
        elif a["density"] == "Decreased opacity":
            a["pattern"] = "Pleural"
        else:
            a["pattern"] = _pick(
                rng,
                {
                    "Focal": {"Consolidation": 0.45, "Nodule/Mass": 0.33, "Pleural": 0.22},
                    "Multifocal": {"Nodule/Mass": 0.6, "Consolidation": 0.4},
                    "Diffuse": {"Interstitial": 0.7, "Consolidation": 0.3},
                }[a["distribution"]],
            )
        p, d = a["pattern"], a["distribution"]
        if p == "Pleural":
            a["location"] = "Pleura/Chest wall"
        elif d != "Focal":
            a["location"] = "Bilateral" if d == "Diffuse" or rng.random() < 0.75 else _zone(rng, 0.5)
        else:
            a["location"] = _zone(rng, {"Cavity": 0.65, "Consolidation": 0.3, "Nodule/Mass": 0.5}[p])
        a["morphology"] = {
            "Consolidation": lambda: _pick(rng, {"Ill-defined": 0.8, "Well-circumscribed": 0.2}),
            "Nodule/Mass": lambda: _pick(
                rng,
                {"Lobulated": 0.55, "Well-circumscribed": 0.45}
                if d == "Focal"
                else {"Well-circumscribed": 0.8, "Lobulated": 0.2},
            ),
            "Interstitial": lambda: "Ill-defined",
            "Cavity": lambda: _pick(rng, {"Thick-walled": 0.7, "Ill-defined": 0.3}),
            "Pleural": lambda: "None",
        }[p]()
        a["secondary"] = _pick(
            rng,
            {
                "Consolidation": {"Air bronchogram": 0.5, "Pleural effusion": 0.2, "None": 0.3},
                "Nodule/Mass": {"None": 0.5, "Volume loss": 0.25, "Pleural effusion": 0.25}
                if d == "Focal"
                else {"None": 0.6, "Pleural effusion": 0.4},
                "Interstitial": {"Cardiomegaly": 0.6, "Pleural effusion": 0.3, "None": 0.1},
                "Cavity": {"None": 0.45, "Volume loss": 0.4, "Pneumothorax": 0.15},
                "Pleural": {"None": 0.6, "Mediastinal shift": 0.4}
                if a["density"] == "Decreased opacity"
                else {"None": 0.4, "Mediastinal shift": 0.3, "Volume loss": 0.3},
            }[p],
        )
    a["diagnosis"] = diagnose(a)
    return a


def diagnose(a: dict[str, str]) -> str:
    """The diagnosis the first six answers imply (the generator never draws it independently)."""
    pattern = a["pattern"]
    if a["density"] == "No abnormality" or pattern == "None":
        return "Normal"
    if pattern == "Pleural":
        return "Pneumothorax" if a["density"] == "Decreased opacity" else "Pleural effusion"
    if pattern == "Cavity":
        return "Tuberculosis" if "upper" in a["location"] or a["location"] == "Bilateral" else "Lung abscess"
    if pattern == "Nodule/Mass":
        return "Metastases" if a["distribution"] == "Multifocal" else "Lung cancer"
    if pattern == "Interstitial":
        return "Heart failure"
    return "Pneumonia"


ATTRIBUTES = ("density", "distribution", "pattern", "location", "morphology", "secondary", "diagnosis")


# ---------------------------------------------------------------- rendering


def _zone_point(chest: _Chest, side: int, zone: str, margin: float) -> complex:
    """A point well inside one lung and in the named zone, by rejection over ``chest.inside_lung``."""
    while True:
        points = chest.inside_lung(side, 16, margin)
        ok = points[points.imag < UPPER_ZONE] if zone == "upper" else points[points.imag > LOWER_ZONE]
        if ok.size:
            return complex(ok[0])


def _sites(chest: _Chest, a: dict[str, str], count: int, margin: float) -> list[tuple[int, complex]]:
    """Where the lesions go: one zone, or spread over both lungs when bilateral."""
    rng = chest.lesion_rng
    if a["location"] in ZONES:
        side, zone = ZONES[a["location"]]
        return [(side, _zone_point(chest, side, zone, margin)) for _ in range(count)]
    sides = [(-1) ** k for k in range(count)]
    return [(side, chest.inside_lung(side, 1, margin)[0]) for side in rng.permutation(sides)]


def _patch(
    chest: _Chest, centre: complex, radius: float, strength: float, edge: float, lung: np.ndarray, bronchi: bool
) -> None:
    """A consolidation: an irregular dense patch, optionally with lucent branching air bronchograms."""
    rng = chest.lesion_rng
    x, y = chest.x[0], chest.y[:, 0]
    dz = (chest.x - centre.real) + 1j * (chest.y - centre.imag)
    border = radius * (1 + 0.25 * smooth_field(rng, x, y, 3.0))
    dense = strength * _sigmoid((border - np.abs(dz)) / edge) * lung
    if bronchi:
        theta = np.angle(dz)
        lines = ((1 + np.cos(rng.uniform(7, 11) * theta + 1.2 * smooth_field(rng, x, y, 1.0))) / 2) ** 14
        dense = dense * (1 - 0.6 * lines * _sigmoid((0.8 * radius - np.abs(dz)) / 0.02))
    np.maximum(chest.opacity, dense, out=chest.opacity)


def _interstitial(chest: _Chest, lungs: dict[int, np.ndarray]) -> None:
    """Bilateral reticular haze, heavier toward the bases (interstitial oedema)."""
    rng = chest.lesion_rng
    x, y = chest.x[0], chest.y[:, 0]
    strength = rng.uniform(0.25, 0.45)
    for side in (-1, 1):
        net = np.clip(0.5 + 0.35 * smooth_field(rng, x, y, rng.uniform(9, 13)), 0, 1) ** 2
        base = _sigmoid((chest.y + 0.35) / 0.15)
        np.maximum(chest.opacity, strength * (0.35 + 0.65 * net) * (0.4 + 0.6 * base) * lungs[side], out=chest.opacity)


def _cavity(chest: _Chest, centre: complex, thick: bool) -> None:
    """A ring opacity with an air-filled centre: thick and sharp, or thinner with a blurred outer edge."""
    rng = chest.lesion_rng
    radius = rng.uniform(0.07, 0.13)
    _round_opacity(chest, centre, radius, rng.uniform(0.65, 0.9), 0.01 if thick else 0.03, 0.1)
    inner = radius * (rng.uniform(0.35, 0.55) if thick else rng.uniform(0.55, 0.72))
    hole = _sigmoid((inner - np.abs((chest.x - centre.real) + 1j * (chest.y - centre.imag))) / 0.008)
    chest.opacity *= 1 - hole
    chest.lucent = (chest.lucent if chest.lucent is not None else 0) + 0.05 * hole


def _lesions(chest: _Chest, a: dict[str, str], lungs: dict[int, np.ndarray], side: int) -> None:
    """Draw the chain's lesions; pleural processes and secondary signs go on ``side``, the abnormal side, except
    with bilateral disease, where an effusion may be on either side or both."""
    rng = chest.lesion_rng
    pattern, morphology = a["pattern"], a["morphology"]
    if pattern == "Consolidation":
        count = {"Focal": 1, "Multifocal": int(rng.integers(2, 4)), "Diffuse": 4}[a["distribution"]]
        radius = (0.10, 0.20) if a["distribution"] == "Focal" else (0.08, 0.14)
        for side, centre in _sites(chest, a, count, 0.2):
            _patch(
                chest,
                centre,
                rng.uniform(*radius),
                rng.uniform(0.45, 0.85),
                0.012 if morphology == "Well-circumscribed" else 0.04,
                lungs[side],
                a["secondary"] == "Air bronchogram",
            )
    elif pattern == "Nodule/Mass":
        focal = a["distribution"] == "Focal"
        count = 1 if focal else int(rng.integers(3, 7))
        for _, centre in _sites(chest, a, count, 0.2 if focal else 0.15):
            radius = rng.uniform(0.05, 0.14) if focal else rng.uniform(0.03, 0.06)
            lobulated = morphology == "Lobulated"
            _round_opacity(
                chest, centre, radius, rng.uniform(0.55, 0.9), 0.008, rng.uniform(0.2, 0.35) if lobulated else 0.0
            )
    elif pattern == "Cavity":
        count = 1 if a["distribution"] == "Focal" else 2
        for _, centre in _sites(chest, a, count, 0.25):
            _cavity(chest, centre, morphology == "Thick-walled")
    elif pattern == "Interstitial":
        _interstitial(chest, lungs)
    elif pattern == "Pleural":
        if a["density"] == "Decreased opacity":
            _pneumothorax(chest, lungs, side)
        else:
            _effusion(chest, lungs, (side,))
    if a["secondary"] == "Pleural effusion":
        _effusion(chest, lungs, None if a["location"] == "Bilateral" else (side,))
    elif a["secondary"] == "Pneumothorax":
        _pneumothorax(chest, lungs, side)


def _volume_and_shift(chest: _Chest, a: dict[str, str]) -> int:
    """The abnormal side (the lesion's zone, else drawn); volume loss raises the dome on that side and pulls the
    mediastinum over, a shift (a tension pneumothorax or a large effusion) pushes it away from that side."""
    rng = chest.lesion_rng
    side = ZONES[a["location"]][0] if a["location"] in ZONES else int(rng.choice((-1, 1)))
    if a["secondary"] == "Volume loss":
        chest.dome_level[side] -= rng.uniform(0.06, 0.12)
        chest.shift = side * rng.uniform(0.03, 0.06)
    elif a["secondary"] == "Mediastinal shift":
        chest.shift = -side * rng.uniform(0.06, 0.10)
    return side


def render(rng: np.random.Generator, a: dict[str, str], size: int = SIZE) -> np.ndarray:
    """A uint8 (size, size) radiograph showing the chain ``a`` (keys ``ATTRIBUTES``)."""
    patient_rng, lesion_rng = rng.spawn(2)
    chest = _patient(
        patient_rng, lesion_rng, size, {"Cardiomegaly": a["secondary"] == "Cardiomegaly", "Atelectasis": False}
    )
    side = _volume_and_shift(chest, a)
    lungs = {s: chest.lung(s) * (1 - chest.heart()) for s in (-1, 1)}
    chest.opacity = np.zeros((size, size), dtype=np.float32)
    chest.aerated = {-1: 1.0, 1: 1.0}
    _lesions(chest, a, lungs, side)
    return composite(chest, lungs, chest.rng.uniform(0, 1))


# ---------------------------------------------------------------- templated text

_REASONS = {
    "density": {
        "No abnormality": "Both lung fields are clear, with normal radiodensity throughout.",
        "Increased opacity": "There is abnormal increased opacity in the {side_word} lung field.",
        "Decreased opacity": "There is an area of abnormal lucency without lung markings.",
        "Mixed opacity": "The lesion contains both soft-tissue opacity and air, a mixed density.",
    },
    "distribution": {
        "None": "No lesion is present, so no distribution applies.",
        "Focal": "The abnormality is confined to one region.",
        "Multifocal": "Several separate lesions are scattered through the lungs.",
        "Diffuse": "The change involves both lungs widely rather than one region.",
    },
    "pattern": {
        "None": "No abnormal pattern is seen.",
        "Consolidation": "Dense airspace opacity obscures the vessels, a consolidation pattern.",
        "Nodule/Mass": "Round soft-tissue opacities indicate a nodular pattern.",
        "Interstitial": "A fine reticular network thickens the interstitium.",
        "Cavity": "A round opacity with a lucent centre indicates a cavity.",
        "Pleural": "The abnormality lies in the pleural space rather than the lung.",
    },
    "location": {
        "None": "No abnormality to localise.",
        "Bilateral": "Both lungs are involved.",
        "Pleura/Chest wall": "The process follows the pleura along the chest wall.",
        **{zone: f"The lesion lies in the {zone.lower()}." for zone in ZONES},
    },
    "morphology": {
        "None": "No discrete lesion margin to describe.",
        "Well-circumscribed": "The margins are sharp and well circumscribed.",
        "Ill-defined": "The margins are ill-defined and fade into the surrounding lung.",
        "Lobulated": "The contour is lobulated.",
        "Thick-walled": "The cavity wall is thick and sharply marginated.",
    },
    "secondary": {
        "None": "No associated signs.",
        "Pleural effusion": "A meniscus blunts the costophrenic angle: a pleural effusion.",
        "Cardiomegaly": "The cardiac silhouette is enlarged.",
        "Volume loss": "The hemidiaphragm is raised and the mediastinum pulled toward the lesion: volume loss.",
        "Pneumothorax": "A visceral pleural line with absent markings beyond it: a pneumothorax.",
        "Air bronchogram": "Branching lucent bronchi run through the opacity: air bronchograms.",
        "Mediastinal shift": "The trachea and heart are displaced away from the abnormal side.",
    },
}


def reasoning(a: dict[str, str], key: str) -> str:
    """The templated rationale of step ``key`` (one of ``ATTRIBUTES``) for the chain ``a``."""
    if key == "diagnosis":
        if a["diagnosis"] == "Normal":
            return "With no abnormality at any step, the film is normal."
        steps = [
            a["density"].lower(),
            a["distribution"].lower(),
            a["pattern"].lower(),
            a["location"].lower(),
            a["morphology"].lower(),
        ]
        tail = "" if a["secondary"] == "None" else f", with {a['secondary'].lower()}"
        diagnosis = a["diagnosis"].lower()
        return (
            f"A {steps[1]} {steps[2]} of {steps[0]} in the {steps[3]}, {steps[4]}{tail}, "
            f"is most consistent with {diagnosis}."
        )
    side = "both" if a["location"] == "Bilateral" else ZONES[a["location"]][0] if a["location"] in ZONES else 0
    return _REASONS[key][a[key]].format(side_word={-1: "right", 1: "left", "both": "bilateral", 0: "affected"}[side])


def chain_record(patient_id: str, image_path: str, a: dict[str, str]) -> dict:
    """A record in the Step-CoT schema for the drawn chain ``a``."""
    chain = [
        {
            "step": f"Step {k + 1}",
            "question": QUESTIONS[k],
            "options": list(OPTIONS[k]),
            "answer": a[key],
            "reasoning": reasoning(a, key),
        }
        for k, key in enumerate(ATTRIBUTES)
    ]
    findings = " ".join(step["reasoning"] for step in chain[:6] if not step["answer"].startswith(("None", "No abn")))
    report = f"FINDINGS: {findings or 'The lungs are clear.'} IMPRESSION: {a['diagnosis']}."
    return {"patient_id": patient_id, "image_path": image_path, "origin": DATASET, "report": report, "vqa_chain": chain}


def simulate(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, dict[str, str]]:
    """One radiograph and its chain."""
    chain_rng, image_rng = rng.spawn(2)
    a = draw_chain(chain_rng)
    return render(image_rng, a, size), a


@register(DATASET)
def make_stepcot_phantom(out: str | Path, n: int = 1, seed: int = 0, size: int = SIZE) -> list[Path]:
    """``n`` images ``images/sc-<index>.png`` (with xray sidecars), ``data.json`` and ``train/val/test.xlsx``
    (70/10/20 by a seeded shuffle) under ``out``; return the image paths. ``data.json`` is written last."""
    import pandas as pd
    from PIL import Image

    _check_int(f"{DATASET} n", n, 1, 100_000)
    _check_int(f"{DATASET} seed", seed, 0, 2**32 - 1)
    _check_int(f"{DATASET} size", size, 64, 512)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CaseError(out, "output path exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, paths = [], []
    for index in range(int(n)):
        image, a = simulate(case_rng(seed, index), size)
        pid = f"sc-{index:05d}"
        path = out / "images" / f"{pid}.png"
        Image.fromarray(image).save(path, format="PNG", compress_level=1)
        sidecar = {"modality": "xray", "dataset": DATASET, "seed": seed, "index": index, "stepcot": a}
        path.with_suffix(".json").write_text(json.dumps(sidecar) + "\n")
        records.append(chain_record(pid, f"images/{pid}.png", a))
        paths.append(path)
    order = np.random.default_rng([seed, 2**31]).permutation(len(records))
    cuts = np.round(np.cumsum(SPLIT_FRACTIONS)[:-1] * len(records)).astype(int)
    for split, part in zip(SPLITS, np.split(order, cuts)):
        rows = [{**records[i], "vqa_chain": json.dumps(records[i]["vqa_chain"])} for i in sorted(part)]
        pd.DataFrame(rows, columns=["patient_id", "image_path", "origin", "report", "vqa_chain"]).to_excel(
            out / f"{split}.xlsx", index=False
        )
    staging = out / ".data.json.partial"
    staging.write_text(json.dumps(records, indent=1) + "\n")
    os.replace(staging, out / "data.json")
    return paths
