"""Labelled image folders for classification: one in-memory view, its readers and the federated client splits.

Why: the federated classification tools (FedLSM for label-set mismatch, FCU for client unlearning; see
``shared/research/tool_methods.md`` sections 2 and 3) train on thousands of labelled 2D images, from the
``derm-phantom`` / ``cxr-phantom`` folders or from the real ISIC 2018 Task 3 and NIH ChestX-ray14 releases. Every
source becomes the same :class:`LabelledSet`, so the training code never looks at a file layout, and every
problem with the files is a :class:`~macro.errors.CaseError` naming the file, found before training starts.

Phantom folders (written by :func:`write_phantom`)
    ``<prefix>-<5-digit index>.png`` per image, a sidecar ``<same stem>.json`` with ``modality``, ``dataset``,
    ``seed``, ``index``, ``multi_label`` and ``labels`` ({class: 0/1}), and ``labels.csv`` (``image,<classes>``,
    0/1 values) listing them all. ``labels.csv`` is written last, so a folder without it was never finished.
    Image ``i`` draws from ``numpy.random.default_rng([seed, i])``: the same (seed, i) gives the same bytes in any
    batch size and on any run.

Client splits, all deterministic by ``seed`` and returning sorted index arrays
    - :func:`label_set_split`: FedLSM's label sets. Shuffle the classes, deal them round-robin to the clients, then
      top every client up to ``per_client`` entries with a draw of distinct classes from all of them; that draw may
      repeat a class the client already holds, so with ``per_client=3`` a client ends with 2 or 3 distinct classes.
    - :func:`erase_labels`: what a client with that label set knows. Columns outside the set become 0 (multi-label:
      an image with no finding left reads as "No Finding"; single-label: the one-hot row may become all zero).
    - :func:`shard`: equal random shards (FedLSM: sizes differ by at most one image, every image used once).
    - :func:`dirichlet_split`: FCU's label-skewed split. Each class is cut among the clients in proportions drawn
      from Dirichlet(alpha); a client that already holds n / n_clients images gets no more (the usual balancing
      rule), and the draw repeats until every client has ``min_size`` images.
    - :func:`train_val_test`: 70/10/20 by default; with ``groups`` (patient ids) no patient spans two parts.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from macro.errors import CaseError

ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
CXR14_CLASSES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
CXR14_COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
NO_FINDING = "No Finding"
LABELS_CSV = "labels.csv"
MAX_IMAGES = 100_000
SIZE_RANGE = (16, 1024)
SHOWN = 5  # how many offending names an error message lists


@dataclass(frozen=True)
class PhantomSpec:
    """What a phantom builder writes: dataset name, modality, file prefix and its label columns."""

    dataset: str
    modality: str
    prefix: str
    classes: tuple[str, ...]
    multi_label: bool


@dataclass
class LabelledSet:
    """Images and their label matrix. ``labels`` is float32 (N, C) of 0/1 in ``classes`` order; ``patient_ids``
    default to one id per image (its file stem), so a patient-level split is always possible."""

    paths: list[Path]
    labels: np.ndarray
    classes: tuple[str, ...]
    multi_label: bool
    modality: str
    patient_ids: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.float32)
        self.classes = tuple(self.classes)
        if self.labels.shape != (len(self.paths), len(self.classes)):
            raise CaseError(
                None, f"labels have shape {self.labels.shape}, expected ({len(self.paths)}, {len(self.classes)})"
            )
        if self.patient_ids is None:
            self.patient_ids = [p.stem for p in self.paths]
        elif len(self.patient_ids) != len(self.paths):
            raise CaseError(None, f"{len(self.patient_ids)} patient ids for {len(self.paths)} images")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledSet:
        """The images at ``indices`` (in that order) with their labels and patient ids."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise CaseError(None, f"subset index out of range for {len(self)} images")
        return LabelledSet(
            [self.paths[i] for i in idx],
            self.labels[idx],
            self.classes,
            self.multi_label,
            self.modality,
            [self.patient_ids[i] for i in idx],
        )

    def load_images(self, size: int = 224, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Float32 (N, 3, size, size) in [0, 1]: each image resized (not cropped) to a square, greyscale copied to
        three channels, as FedLSM's and FCU's pipelines feed their networks. ``indices`` loads a batch only."""
        _check_int("size", size, *SIZE_RANGE)
        idx = range(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), 3, size, size), dtype=np.float32)
        for k, i in enumerate(idx):
            out[k] = _load_rgb(self.paths[i], size)
        return out


def _load_rgb(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # decode at the smallest DCT scale still >= size: much faster
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(im, dtype=np.float32)
                grey = Image.fromarray(arr / (65535.0 if arr.max() > 255 else 255.0), mode="F")
                plane = np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
                return np.repeat(np.clip(plane, 0, 1)[None], 3, axis=0)
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.moveaxis(np.asarray(rgb, dtype=np.float32), -1, 0) / 255.0
    except FileNotFoundError:
        raise CaseError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CaseError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------- writing phantom folders


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The stream of image ``index`` of a dataset built from ``seed``: independent of batch size and order."""
    return np.random.default_rng([seed, index])


def image_size(spec: PhantomSpec, options: dict, default: int = 96) -> int:
    """The ``size`` option (image side in pixels); any other option is an error naming the accepted ones."""
    unknown = sorted(set(options) - {"size"})
    if unknown:
        raise CaseError(None, f"{spec.dataset} has no option(s) {', '.join(unknown)}", accepted="n, seed, size")
    size = options.get("size", default)
    _check_int(f"{spec.dataset} size", size, *SIZE_RANGE)
    return int(size)


def write_phantom(
    out: str | Path,
    spec: PhantomSpec,
    n: int,
    seed: int,
    simulate: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
) -> list[Path]:
    """Write ``n`` images made by ``simulate(rng) -> (uint8 image, 0/1 labels)``, their sidecars and ``labels.csv``;
    return the image paths."""
    from PIL import Image

    _check_int(f"{spec.dataset} n", n, 1, MAX_IMAGES)
    _check_int(f"{spec.dataset} seed", seed, 0, 2**32 - 1)
    n, seed, out = int(n), int(seed), Path(out)
    if out.exists() and not out.is_dir():
        raise CaseError(out, "output path exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for index in range(n):
        image, labels = simulate(case_rng(seed, index))
        stem = f"{spec.prefix}-{index:05d}"
        path = out / f"{stem}.png"
        Image.fromarray(image).save(path, format="PNG", compress_level=1)  # fast; files ~10 % larger than level 6
        values = [int(v) for v in labels]
        sidecar = {
            "modality": spec.modality,
            "dataset": spec.dataset,
            "seed": seed,
            "index": index,
            "multi_label": spec.multi_label,
            "labels": dict(zip(spec.classes, values)),
        }
        (out / f"{stem}.json").write_text(json.dumps(sidecar) + "\n")
        paths.append(path)
        rows.append([path.name, *values])
    staging = out / f".{LABELS_CSV}.partial"
    with staging.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", *spec.classes])
        writer.writerows(rows)
    os.replace(staging, out / LABELS_CSV)
    return paths


def smooth_field(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cycles: float, waves: int = 6) -> np.ndarray:
    """Unit-variance smooth noise (H, W) on the grid u (W,) x v (H,): ``waves`` random plane waves of about
    ``cycles`` per unit. cos(a + b) = cos a cos b - sin a sin b makes it one small matrix product instead of a
    cosine per pixel and wave, which keeps the phantoms fast."""
    angle, stretch, phase = rng.random((3, waves)) * np.array([[2 * np.pi], [0.6], [2 * np.pi]])
    freq = 2 * np.pi * cycles * (0.7 + stretch)
    quarter = np.repeat(np.array([0.0, np.pi / 2]), waves)
    left = np.cos(np.outer(v, np.tile(freq * np.sin(angle), 2)) + np.tile(phase, 2) + quarter)  # cos b | -sin b
    right = np.cos(np.outer(np.tile(freq * np.cos(angle), 2), u) - quarter[:, None])  # cos a | sin a
    return (left.astype(np.float32) @ right.astype(np.float32)) * np.float32(np.sqrt(2.0 / waves))


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise CaseError(None, f"{name} must be an integer in [{low}, {high}], got {value!r}")


# ---------------------------------------------------------------- readers


def read_phantom(folder: str | Path) -> LabelledSet:
    """A folder made by ``macro data make derm-phantom|cxr-phantom``: ``labels.csv`` plus the first sidecar."""
    folder = Path(folder)
    csv_path = folder / LABELS_CSV
    accepted = "a folder made by `macro data make derm-phantom|cxr-phantom` (images, sidecars, labels.csv)"
    if not folder.is_dir():
        raise CaseError(folder, "folder not found", accepted=accepted)
    header, rows = _read_csv(csv_path, accepted)
    if not header or header[0] != "image" or len(header) < 2:
        raise CaseError(
            csv_path, f"header must start with 'image' and name the classes, got {header}", accepted="image,<class>,..."
        )
    classes = tuple(header[1:])
    _require_width(csv_path, header, rows)
    names = [row[0] for row in rows]
    _require_unique(csv_path, names, "image")
    labels = _numeric(csv_path, rows, classes, offset=1)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise CaseError(csv_path, "label values must be 0 or 1")
    side_path = folder / (Path(names[0]).stem + ".json")
    try:
        side = json.loads(side_path.read_text())
        modality, multi_label, sidecar_classes = side["modality"], bool(side["multi_label"]), tuple(side["labels"])
    except FileNotFoundError:
        raise CaseError(side_path, "sidecar JSON not found", accepted=accepted) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CaseError(
            side_path, f"sidecar JSON is unreadable or lacks modality/multi_label/labels ({type(exc).__name__}: {exc})"
        ) from None
    if sidecar_classes != classes:
        raise CaseError(csv_path, f"columns {list(classes)} differ from the sidecar's classes {list(sidecar_classes)}")
    if not multi_label:
        _require_one_hot(csv_path, names, labels)
    return LabelledSet(_existing(folder, names, csv_path), labels, classes, multi_label, modality)


def read_isic2018(csv_path: str | Path, image_dir: str | Path) -> LabelledSet:
    """ISIC 2018 Task 3 ground truth (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, one-hot "1.0"/"0.0") with images at
    ``image_dir/<image>.jpg``."""
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    accepted = "ISIC 2018 Task 3 GroundTruth CSV: image," + ",".join(ISIC_CLASSES)
    header, rows = _read_csv(csv_path, accepted)
    _require_columns(csv_path, header, ("image", *ISIC_CLASSES), accepted)
    _require_width(csv_path, header, rows)
    position = {name: header.index(name) for name in header}
    ordered = [[row[position["image"]], *(row[position[c]] for c in ISIC_CLASSES)] for row in rows]
    names = [row[0] for row in ordered]
    _require_unique(csv_path, names, "image")
    labels = _numeric(csv_path, ordered, ISIC_CLASSES, offset=1)
    _require_one_hot(csv_path, names, labels)
    return LabelledSet(
        _existing(image_dir, [f"{name}.jpg" for name in names], csv_path),
        labels,
        ISIC_CLASSES,
        multi_label=False,
        modality="dermoscopy",
    )


def read_chestxray14(csv_path: str | Path, image_dir: str | Path, classes: Sequence[str] | None = None) -> LabelledSet:
    """NIH ``Data_Entry_2017.csv`` with images at ``image_dir/<Image Index>``; columns are the 14 findings (or
    ``classes``, a subset in the order given), patient ids come from ``Patient ID``."""
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    accepted = "NIH Data_Entry_2017.csv: " + ",".join(CXR14_COLUMNS)
    chosen = tuple(CXR14_CLASSES if classes is None else classes)
    unknown = [c for c in chosen if c not in CXR14_CLASSES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise CaseError(
            csv_path,
            f"classes must be distinct ChestX-ray14 findings, got {list(chosen)}",
            accepted=", ".join(CXR14_CLASSES),
        )
    header, rows = _read_csv(csv_path, accepted)
    while header and header[-1] == "":  # some copies of the file end every line with a comma
        header = header[:-1]
        rows = [row[:-1] if len(row) == len(header) + 1 and row[-1] == "" else row for row in rows]
    _require_columns(csv_path, header, CXR14_COLUMNS, accepted)
    _require_width(csv_path, header, rows)
    image_col, findings_col, patient_col = (header.index(c) for c in ("Image Index", "Finding Labels", "Patient ID"))
    names = [row[image_col].strip() for row in rows]
    _require_unique(csv_path, names, "Image Index")
    column = {c: k for k, c in enumerate(chosen)}
    labels = np.zeros((len(rows), len(chosen)), dtype=np.float32)
    patients = []
    for line, row in enumerate(rows, start=2):
        findings = [f.strip() for f in row[findings_col].split("|")]
        if findings != [NO_FINDING]:
            bad = [f for f in findings if f not in CXR14_CLASSES]
            if bad:
                raise CaseError(
                    csv_path,
                    f"line {line}: unknown finding(s) {bad} in {row[findings_col]!r}",
                    accepted=f"{NO_FINDING!r} or '|'-separated " + ", ".join(CXR14_CLASSES),
                )
            for finding in findings:
                if finding in column:
                    labels[line - 2, column[finding]] = 1.0
        patient = row[patient_col].strip()
        if not patient.isdigit():
            raise CaseError(csv_path, f"line {line}: Patient ID {patient!r} is not a number")
        patients.append(patient)
    return LabelledSet(
        _existing(image_dir, names, csv_path), labels, chosen, multi_label=True, modality="xray", patient_ids=patients
    )


def _read_csv(path: Path, accepted: str) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise CaseError(
            path, "file not found" if not path.exists() else "expected a file but found a folder", accepted=accepted
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            table = [row for row in csv.reader(fh) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CaseError(path, f"not a readable CSV file ({type(exc).__name__}: {exc})") from None
    if len(table) < 2:
        raise CaseError(path, "CSV has no data rows" if table else "CSV is empty", accepted=accepted)
    return [h.strip() for h in table[0]], table[1:]


def _require_columns(path: Path, header: list[str], expected: Sequence[str], accepted: str) -> None:
    missing = [c for c in expected if c not in header]
    extra = [c for c in header if c not in expected]
    if missing or extra or len(header) != len(expected):
        parts = ([f"missing column(s) {missing}"] if missing else []) + (
            [f"unexpected column(s) {extra}"] if extra else []
        )
        raise CaseError(path, "; ".join(parts) or f"duplicate column(s) in {header}", accepted=accepted)


def _require_width(path: Path, header: list[str], rows: list[list[str]]) -> None:
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise CaseError(path, f"line {line} has {len(row)} fields, the header has {len(header)}")


def _require_unique(path: Path, names: list[str], what: str) -> None:
    seen, repeated = set(), []
    for name in names:
        if name in seen:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise CaseError(path, f"{what} repeated: {repeated[:SHOWN]}")
    if any(not name.strip() for name in names):
        raise CaseError(path, f"empty {what} value")


def _numeric(path: Path, rows: list[list[str]], classes: Sequence[str], offset: int) -> np.ndarray:
    labels = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for line, row in enumerate(rows, start=2):
        for k, text in enumerate(row[offset:]):
            try:
                labels[line - 2, k] = float(text)
            except ValueError:
                raise CaseError(path, f"line {line}, column {classes[k]!r}: {text!r} is not a number") from None
    if not np.isfinite(labels).all():
        raise CaseError(path, "label values must be finite numbers")
    return labels


def _require_one_hot(path: Path, names: list[str], labels: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isin(labels, (0.0, 1.0)).all(axis=1) | (labels.sum(axis=1) != 1))
    if bad.size:
        shown = ", ".join(names[i] for i in bad[:SHOWN])
        raise CaseError(path, f"{bad.size} row(s) are not one-hot (exactly one 1, the rest 0), e.g. {shown}")


def _existing(image_dir: Path, names: Iterable[str], listed_in: Path) -> list[Path]:
    """Image paths in order; every file must exist (the error lists the first few missing)."""
    if not image_dir.is_dir():
        raise CaseError(image_dir, f"image folder not found (named by {listed_in})")
    present = {entry.name for entry in os.scandir(image_dir) if entry.is_file()}
    names = list(names)
    missing = [name for name in names if name not in present]
    if missing:
        raise CaseError(
            image_dir,
            f"{len(missing)} image file(s) listed in {listed_in.name} are missing: "
            f"{', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''}",
        )
    return [image_dir / name for name in names]


# ---------------------------------------------------------------- client splits


def label_set_split(n_classes: int, n_clients: int, per_client: int = 3, seed: int = 0) -> list[list[int]]:
    """FedLSM's per-client label sets (sorted class indices); see the module docstring for the rule."""
    _check_int("n_classes", n_classes, 1, 10_000)
    _check_int("n_clients", n_clients, 1, 10_000)
    _check_int("per_client", per_client, 1, n_classes)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_classes)
    sets = [[int(c) for c in order[k::n_clients]] for k in range(n_clients)]
    for dealt in sets:
        if len(dealt) < per_client:
            dealt.extend(int(c) for c in rng.choice(n_classes, size=per_client - len(dealt), replace=False))
    return [sorted(set(dealt)) for dealt in sets]


def erase_labels(labels: np.ndarray, label_set: Iterable[int], multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(erased labels, label_mask)`` for a client that annotates only ``label_set``: columns outside it are 0,
    ``label_mask`` (C,) is 1 on the set. Single-label input must be one-hot (or all-zero) rows."""
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2:
        raise CaseError(None, f"labels must be (N, C), got shape {labels.shape}")
    chosen = sorted({int(c) for c in label_set})
    if any(c < 0 or c >= labels.shape[1] for c in chosen):
        raise CaseError(None, f"label set {chosen} has a class outside 0..{labels.shape[1] - 1}")
    if not multi_label and labels.size and ((labels.sum(axis=1) > 1) | ~np.isin(labels, (0.0, 1.0)).all(axis=1)).any():
        raise CaseError(None, "single-label labels must be one-hot rows")
    mask = np.zeros(labels.shape[1], dtype=np.float32)
    mask[chosen] = 1.0
    return labels * mask, mask


def shard(n: int, n_clients: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` indices in ``n_clients`` random shards whose sizes differ by at most one."""
    _check_int("n", n, 0, 10**9)
    _check_int("n_clients", n_clients, 1, max(1, n))
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def dirichlet_split(
    class_index: Sequence[int] | np.ndarray,
    n_clients: int,
    alpha: float = 1.0,
    seed: int = 0,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """FCU's label-skewed client split of images with class ``class_index`` (N,); see the module docstring."""
    y = np.asarray(class_index)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise CaseError(None, "class_index must be a 1-D array of non-negative class integers")
    _check_int("n_clients", n_clients, 1, 10_000)
    if not (np.isfinite(alpha) and alpha > 0):
        raise CaseError(None, f"alpha must be a positive number, got {alpha!r}")
    if len(y) < n_clients * min_size:
        raise CaseError(None, f"{len(y)} images cannot give {n_clients} clients {min_size} each; lower min_size")
    rng = np.random.default_rng(seed)
    quota = len(y) / n_clients
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            share = rng.dirichlet(np.full(n_clients, float(alpha)))
            share = share * np.array([len(p) < quota for p in parts])
            cuts = (np.cumsum(share / share.sum()) * len(members)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(members, cuts)):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise CaseError(
        None,
        f"no Dirichlet(alpha={alpha}) split gave every client {min_size} images in {max_tries} draws; "
        "raise alpha or lower min_size",
    )


def train_val_test(
    n: int, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train/val/test index arrays; with ``groups`` the fractions count groups, and a group stays whole."""
    _check_int("n", n, 0, 10**9)
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise CaseError(None, f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    if groups is None:
        owner, count = np.arange(n), n
    else:
        if len(groups) != n:
            raise CaseError(None, f"{len(groups)} groups for {n} items")
        _, owner = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        count = int(owner.max()) + 1 if n else 0
    order = rng.permutation(count)
    n_train, n_val = round(fractions[0] * count), round(fractions[1] * count)
    part = np.empty(count, dtype=np.int64)
    part[order[:n_train]], part[order[n_train : n_train + n_val]], part[order[n_train + n_val :]] = 0, 1, 2
    return tuple(np.flatnonzero(part[owner] == k) for k in range(3))
