"""Case I/O: one validated, content-hashed view of a scan on disk.

A ``Case`` is cheap to create (headers, hash, sanity checks) and loads voxels on first use. Formats are read
with nibabel (NIfTI), pydicom (DICOM file or series folder) and Pillow (PNG/JPEG); a multi-sequence MRI case is
a folder in the BraTS layout or four NIfTI files in the order T1, T1ce, T2, FLAIR. Every problem with the input
raises :class:`~macro.errors.CaseError` naming the file, so callers never see a library's traceback.

Arrays are channel-first float32: ``(C, X, Y, Z)`` for volumes, ``(C, H, W)`` for 2D images. Volumes keep the
file's voxel order (no reorientation); the affine travels with the case so masks are written back aligned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from macro.config import Home
from macro.errors import CaseError
from macro.plugins import MODALITY_GROUP, declared

MODALITIES = ("mri-multiseq", "mr", "ct", "xray", "dermoscopy", "fundus", "histology", "us", "pet", "other")
SEQUENCES = ("t1", "t1ce", "t2", "flair")
# BraTS 2023+ names first, then the older challenge names.
SEQUENCE_SUFFIXES = {"t1": ("t1n", "t1"), "t1ce": ("t1c", "t1ce"), "t2": ("t2w", "t2"), "flair": ("t2f", "flair")}
NIFTI_EXT = (".nii.gz", ".nii")
IMAGE_EXT = (".png", ".jpg", ".jpeg")
DICOM_EXT = (".dcm", ".dicom")
ACCEPTED = (
    "NIfTI (.nii/.nii.gz), DICOM file or series folder, PNG/JPEG, or a BraTS-layout folder / four NIfTI "
    "(T1, T1ce, T2, FLAIR)"
)
MAX_DIM = 2048
# Decoded values (voxels x channels) a case may hold: 512^3, 512 MiB as float32. The bound is checked on the
# declared header before any pixel is read, so a small compressed file cannot expand past ~1 GB in any process.
MAX_VOXELS = 2**27
DICOM_MODALITY = {
    "MR": "mr",
    "CT": "ct",
    "CR": "xray",
    "DX": "xray",
    "US": "us",
    "PT": "pet",
    "OP": "fundus",
    "XC": "dermoscopy",
    "SM": "histology",
}


@dataclass(frozen=True)
class Case:
    """A validated scan. ``id`` is a content hash, so the same bytes give the same id wherever they live."""

    id: str
    paths: tuple[Path, ...]
    modality: str
    channels: tuple[str, ...]
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    label_path: Path | None = None
    affine: np.ndarray | None = field(default=None, compare=False, repr=False)
    source: str | tuple[str, ...] = ""

    @property
    def dims(self) -> int:
        return len(self.shape)

    def __getstate__(self) -> dict:
        """Pickled without decoded voxels: a tool worker reads the scan itself rather than receive it by pipe."""
        return {k: v for k, v in self.__dict__.items() if k not in ("image", "labels")}

    @cached_property
    def image(self) -> np.ndarray:
        """Channel-first float32 voxels, loaded and checked on first access."""
        return _read_pixels(self)

    @cached_property
    def labels(self) -> np.ndarray | None:
        """Reference label map (BraTS ``seg``) when the case ships one, else None."""
        if self.label_path is None:
            return None
        data = _nifti_data(self.label_path)
        if data.shape != self.shape:
            raise CaseError(self.label_path, f"label map shape {data.shape} differs from the image shape {self.shape}")
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise CaseError(self.label_path, f"label map holds {bad} NaN or infinite voxel(s); labels are integers")
        if data.min() < 0 or data.max() > np.iinfo(np.int16).max:
            raise CaseError(self.label_path, f"label values span {data.min():g}..{data.max():g}, not label integers")
        return np.rint(data).astype(np.int16)

    def channel(self, name: str | None = None) -> np.ndarray:
        if name is None:
            return self.image[0]
        if name not in self.channels:
            raise CaseError(self.paths[0], f"no sequence/channel {name!r}", accepted=", ".join(self.channels))
        return self.image[self.channels.index(name)]

    @property
    def provides(self) -> frozenset[str]:
        """Artifact kinds the case itself supplies to tools: its image, and a mask when it ships a reference one."""
        return frozenset({"image", "mask"} if self.label_path is not None else {"image"})

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def ref(self) -> dict:
        """JSON-able reference stored in threads, trajectories and ``--json`` output: the case id and modality with
        the location relative to ``MACRO_CASE_ROOT`` or MACRO_HOME when the files lie under one, else only a hash of
        it, since a scan's path often carries a name or a record number (:func:`load_case_ref` reloads it)."""
        sources = list(self.source) if isinstance(self.source, tuple) else [self.source or str(self.paths[0])]
        return {**_stored_location(sources, isinstance(self.source, tuple)), "modality": self.modality, "id": self.id}

    def summary(self) -> str:
        shape = "x".join(str(s) for s in self.shape)
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        reference = ", reference tumour mask available" if self.label_path is not None else ""
        channels = ", ".join(self.channels)
        return f"{self.modality}, {self.dims}D {shape} voxels at {spacing} mm, channels {channels}{reference}"


def modalities() -> tuple[str, ...]:
    """The built-in modalities, then those installed plug-ins declare (:mod:`macro.plugins`)."""
    return MODALITIES + tuple(m for m in declared(MODALITY_GROUP) if m not in MODALITIES)


def unknown_modality(value: str) -> str:
    """Why ``value`` is refused as a modality, with the way to add one."""
    return f"unknown modality {value!r} (a plug-in adds one as an entry point in the group {MODALITY_GROUP})"


def load_case(source: str | Path | Sequence[str | Path], modality: str | None = None, check: bool = True) -> Case:
    """Open a scan and validate it. ``check`` also decodes the voxels once to reject NaN/inf or blank images."""
    if modality is not None and modality not in modalities():
        raise CaseError(None, unknown_modality(modality), accepted=", ".join(modalities()))
    if isinstance(source, (list, tuple)):
        case = _multiseq_from_files([Path(p) for p in source], modality)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise CaseError(path, "file or folder not found")
        if path.is_dir():
            case = _from_folder(path, modality)
        else:
            case = _from_file(path, modality)
    case = dataclasses.replace(
        case,
        source=tuple(str(Path(p).resolve()) for p in source)
        if isinstance(source, (list, tuple))
        else str(Path(source).expanduser().resolve()),
    )
    if check:
        case.image  # noqa: B018 - decode now so bad voxels fail before any agent work starts
        case.labels  # noqa: B018
    with _CACHE_LOCK:  # a reference that keeps only a hash of the location reloads in this process
        _SOURCES[case.id] = case.source
    return case


CASES_CACHED = 8  # decoded cases a process keeps for reloads by reference, newest last
_CACHE: OrderedDict[tuple[str, str], Case] = OrderedDict()
_SOURCES: dict[str, str | tuple[str, ...]] = {}  # case id -> where this process loaded it from (no voxels)
_CACHE_LOCK = threading.Lock()
HASHED = (
    "this thread's scan is known by its content hash only: MACRO stores no case path outside MACRO_CASE_ROOT (paths "
    "often carry names or record numbers). Give the scan again (macro ask CASE --thread ID ...), or set "
    "MACRO_CASE_ROOT to the folder that holds your scans before asking"
)


def case_roots() -> dict[str, Path]:
    """The folders a stored case location may be relative to: the user-named ``MACRO_CASE_ROOT`` and MACRO_HOME."""
    roots = {"home": Home.current().root}
    if os.environ.get("MACRO_CASE_ROOT"):
        roots = {"case_root": Path(os.environ["MACRO_CASE_ROOT"]).expanduser(), **roots}
    return {name: root.resolve() for name, root in roots.items()}


def _stored_location(sources: list[str], several: bool) -> dict:
    for name, root in case_roots().items():
        if all(Path(p).is_relative_to(root) for p in sources):
            relative = [str(Path(p).relative_to(root)) for p in sources]
            return {"root": name, "source": relative if several else relative[0]}
    return {"path_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]}


def _locate(ref: dict) -> str | list[str]:
    """Where a reference's files are now: under its root, where this process loaded the case, or (a reference
    written before locations were kept private) its absolute path."""
    if "root" in ref:
        root = case_roots().get(ref["root"])
        if root is None:
            raise CaseError(None, "this thread's scan is stored relative to MACRO_CASE_ROOT, which is not set now")
        source = ref["source"]
        return [str(root / p) for p in source] if isinstance(source, list) else str(root / source)
    if "path_sha256" in ref:
        with _CACHE_LOCK:
            known = _SOURCES.get(ref.get("id", ""))
        if known is None:
            raise CaseError(None, HASHED)
        return list(known) if isinstance(known, tuple) else known
    return ref["source"]


def load_case_ref(ref: dict) -> Case:
    """Reload a case from :meth:`Case.ref`, reusing this process's copy (decoded voxels included) when it has one."""
    key = (ref.get("id", ""), ref.get("modality", ""))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    return share_case(load_case(_locate(ref), ref.get("modality"), check=False))


def share_case(case: Case) -> Case:
    """Put an already loaded case where :func:`load_case_ref` finds it, so a turn decodes its voxels once (the
    caller's copy), not again for every graph step; returns the case the cache holds for it."""
    key = (case.id, case.modality)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = case
            while len(_CACHE) > CASES_CACHED:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return _CACHE[key]


# ---------------------------------------------------------------- file kinds


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_EXT):
        return "nifti"
    if name.endswith(IMAGE_EXT):
        return "image"
    if name.endswith(DICOM_EXT) or _has_dicom_magic(path):
        return "dicom"
    return "unknown"


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _require_nonempty(path: Path) -> None:
    if not path.exists():
        raise CaseError(path, "file not found")
    if path.is_dir():
        raise CaseError(path, "expected a file but found a folder")
    if path.stat().st_size == 0:
        raise CaseError(path, "file is empty (0 bytes)")


def _content_id(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "case-" + digest.hexdigest()[:16]


def _sidecar_modality(path: Path) -> str | None:
    """BIDS-style sidecar JSON (``scan.json`` next to ``scan.nii.gz``, or ``case.json`` in a folder)."""
    candidates = [path / "case.json"] if path.is_dir() else [path.with_name(_stem(path) + ".json")]
    for side in candidates:
        if side.is_file():
            try:
                value = json.loads(side.read_text()).get("modality")
            except (OSError, ValueError, AttributeError) as exc:
                raise CaseError(side, f"sidecar JSON is unreadable: {exc}") from None
            if value is not None and value not in modalities():
                raise CaseError(side, f"sidecar names {unknown_modality(value)}", accepted=", ".join(modalities()))
            return value
    return None


def _stem(path: Path) -> str:
    name = path.name
    for ext in NIFTI_EXT + IMAGE_EXT + DICOM_EXT:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _check_shape(path: Path, shape: tuple[int, ...], channels: int = 1) -> None:
    if any(int(s) <= 0 for s in shape):
        raise CaseError(path, f"image has an empty dimension (shape {shape})")
    if max(shape) > MAX_DIM:
        raise CaseError(path, f"image size {shape} is implausible for a scan (limit {MAX_DIM} per axis)")
    values = int(np.prod(shape, dtype=np.int64)) * channels
    if values > MAX_VOXELS:
        what = f"{values:,} voxels" if channels == 1 else f"{values:,} values ({channels} channels)"
        raise CaseError(
            path,
            f"image size {shape} holds {what}, over the limit of {MAX_VOXELS:,}; crop or downsample it first",
        )


def _check_spacing(path: Path, spacing: Sequence[float]) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if not all(np.isfinite(s) and 0 < s <= 100 for s in spacing):
        raise CaseError(path, f"voxel spacing {spacing} is not a positive size in mm")
    return spacing


# ---------------------------------------------------------------- NIfTI


def _nifti_header(path: Path):
    import nibabel as nib

    _require_nonempty(path)
    try:
        with warnings.catch_warnings():  # nibabel warns of what it tolerates; the checks below name what matters
            warnings.simplefilter("ignore")
            img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise CaseError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):  # CIFTI-2 and other .nii containers
        raise CaseError(
            path,
            f"a {type(img).__name__} ({'x'.join(map(str, shape))} matrix, not a volume on a voxel grid)",
            accepted="a 3D NIfTI-1/NIfTI-2 volume",
        )
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise CaseError(
            path,
            f"4D image {shape}; a single 3D volume is needed",
            accepted="3D NIfTI, or split the 4th axis into files",
        )
    if len(shape) == 3 and shape[2] == 1:  # one slice is a 2D image, with an in-plane spacing only
        shape = shape[:2]
    if len(shape) not in (2, 3):
        raise CaseError(path, f"{len(shape)}D NIfTI image {shape}; a 2D image or a 3D volume is needed")
    _check_shape(path, shape)
    _check_extensions(path, img)
    spacing = _check_spacing(path, img.header.get_zooms()[: len(shape)])
    return img, shape, spacing


def _check_extensions(path: Path, img) -> None:
    """Header extensions must be whole 16-byte blocks that end before the voxel data: nibabel tolerates sizes that
    do not, and guesses, so a damaged header would otherwise pass as a scan."""
    from nibabel.openers import ImageOpener

    header = img.header
    start = int(header.sizeof_hdr)
    offset = int(img.dataobj.offset)  # where the voxels are read from (the loaded header's own field is reset)
    order = "<" if header.endianness == "<" else ">"
    with ImageOpener(str(path)) as fh:  # each extension's 8-byte head only: a bogus offset must not be read whole
        fh.seek(start)
        flag = fh.read(4)
        if len(flag) < 4 or flag[0] == 0:
            return
        at = start + 4
        while at < offset:
            fh.seek(at)
            head = fh.read(8)
            if len(head) < 8:
                raise CaseError(path, f"NIfTI extension at byte {at} runs past the voxel data offset {offset}")
            size = int(np.frombuffer(head[:4], f"{order}i4")[0])
            if size < 16 or size % 16 or at + size > offset:
                raise CaseError(
                    path,
                    f"damaged NIfTI header: the extension at byte {at} declares {size} bytes, which is not a whole "
                    f"number of 16-byte blocks ending before the voxel data at byte {offset}",
                )
            at += size


def _nifti_data(path: Path, out: np.ndarray | None = None) -> np.ndarray:
    """The voxels as float32, written into ``out`` when given. Scaling is applied in place in float32, so the peak is
    the stored array plus the result (nibabel's own scaling goes through float64: twice the result again)."""
    img, shape, _ = _nifti_header(path)
    proxy = img.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled()).reshape(shape)
        out = np.empty(shape, np.float32) if out is None else out
        out[...] = raw
        del raw
        slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    except Exception as exc:  # truncated gzip, short file, bad scaling
        raise CaseError(
            path, f"voxel data cannot be read, the file is truncated or corrupt ({type(exc).__name__})"
        ) from None
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


def _from_nifti(path: Path, modality: str | None) -> Case:
    img, shape, spacing = _nifti_header(path)
    return Case(
        id=_content_id([path]),
        paths=(path,),
        modality=modality or _sidecar_modality(path) or "mr",
        channels=("image",),
        shape=shape,
        spacing=spacing,
        affine=np.asarray(img.affine, dtype=np.float64),
    )


def _multiseq_from_files(paths: list[Path], modality: str | None, label: Path | None = None) -> Case:
    if len(paths) != len(SEQUENCES):
        raise CaseError(
            paths[0] if paths else None,
            f"a multi-sequence MRI case needs {len(SEQUENCES)} NIfTI files, got {len(paths)}",
            accepted="T1, T1ce, T2, FLAIR in that order",
        )
    headers = []
    for path in paths:
        if _kind(path) != "nifti":
            raise CaseError(
                path,
                "each sequence of a multi-sequence case must be NIfTI",
                accepted="T1, T1ce, T2, FLAIR as .nii/.nii.gz",
            )
        headers.append(_nifti_header(path))
    img0, shape, spacing = headers[0]
    for path, (_, other_shape, _) in zip(paths[1:], headers[1:]):
        if other_shape != shape:
            raise CaseError(
                path, f"shape {other_shape} differs from the T1 shape {shape}; sequences must be co-registered"
            )
    _check_shape(paths[0], shape, len(SEQUENCES))
    if modality not in (None, "mri-multiseq"):
        raise CaseError(paths[0], f"four sequences make an mri-multiseq case, not {modality!r}")
    return Case(
        id=_content_id(paths + ([label] if label else [])),
        paths=tuple(paths),
        modality="mri-multiseq",
        channels=SEQUENCES,
        shape=shape,
        spacing=spacing,
        label_path=label,
        affine=np.asarray(img0.affine, dtype=np.float64),
    )


def brats_files(folder: Path) -> tuple[list[Path], Path | None] | None:
    """Find the four sequences (and ``seg``) of a BraTS-layout folder; None when the folder is not one."""
    niftis = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_EXT)]

    def find(suffixes: Sequence[str]) -> Path | None:
        for suffix in suffixes:
            for p in niftis:
                stem = _stem(p).lower()
                if stem.endswith(f"-{suffix}") or stem.endswith(f"_{suffix}") or stem == suffix:
                    return p
        return None

    found = {seq: find(SEQUENCE_SUFFIXES[seq]) for seq in SEQUENCES}
    if not any(found.values()):
        return None
    missing = [seq for seq, p in found.items() if p is None]
    if missing:
        names = "; ".join(f"{seq}: *-{'/'.join(SEQUENCE_SUFFIXES[seq])}.nii.gz" for seq in missing)
        raise CaseError(folder, f"BraTS-layout folder lacks sequence(s) {', '.join(missing)}", accepted=names)
    return [found[s] for s in SEQUENCES], find(("seg",))


# ---------------------------------------------------------------- folders and single files


def _from_folder(folder: Path, modality: str | None) -> Case:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise CaseError(folder, "folder is empty", accepted=ACCEPTED)
    brats = brats_files(folder)
    if brats is not None:
        return _multiseq_from_files(brats[0], modality or _sidecar_modality(folder), label=brats[1])
    dicoms = sorted(p for p in entries if p.is_file() and _kind(p) == "dicom")
    if dicoms:
        return _from_dicom(dicoms, modality or _sidecar_modality(folder), origin=folder)
    raise CaseError(folder, "folder holds neither a BraTS-layout case nor DICOM files", accepted=ACCEPTED)


def _from_file(path: Path, modality: str | None) -> Case:
    _require_nonempty(path)
    kind = _kind(path)
    if kind == "nifti":
        return _from_nifti(path, modality)
    if kind == "dicom":
        return _from_dicom([path], modality, origin=path)
    if kind == "image":
        return _from_picture(path, modality)
    raise CaseError(path, f"unsupported file type {''.join(path.suffixes) or '(no extension)'}", accepted=ACCEPTED)


# ---------------------------------------------------------------- DICOM


# DICOM objects that carry no image to read, by Modality: named in the refusal so the user knows what they gave.
NON_IMAGE_DICOM = {
    "SEG": "a DICOM SEG segmentation object (a mask drawn on another series)",
    "RTDOSE": "an RT dose grid",
    "RTSTRUCT": "an RT structure set (contours)",
    "RTPLAN": "an RT treatment plan",
    "RTRECORD": "an RT treatment record",
    "SR": "a structured report",
    "ECG": "an ECG waveform",
    "PR": "a presentation state",
    "KO": "a key-object selection",
    "REG": "a spatial registration object",
    "DOC": "an encapsulated document",
}


def _non_image(ds) -> str | None:
    """What a DICOM object is when it is not an image to read, else None."""
    modality = str(getattr(ds, "Modality", ""))
    if modality in NON_IMAGE_DICOM:
        return NON_IMAGE_DICOM[modality]
    if "WaveformSequence" in ds:
        return f"a {modality or 'DICOM'} waveform"
    return None


def _dcmread(path: Path, header_only: bool):
    import pydicom

    _require_nonempty(path)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=header_only, force=path.suffix.lower() in DICOM_EXT)
        # pydicom decodes each element on first access, so a damaged one (an unknown VR, a length that does not fit
        # its VR) would raise wherever it is first read; decoding them all here reports it once, as this file's.
        _decode_elements(ds)
        return ds
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CaseError(path, f"not a readable DICOM file ({type(exc).__name__}: {first[:300]})") from None


def _decode_elements(ds) -> None:
    """Read every element once (iterating a dataset decodes each), items of sequences included."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _decode_elements(item)


def _header(path: Path, ds, keyword: str, default, cast=float):
    """A numeric header attribute (each value of a multi-valued one), ``default`` when absent or empty, or a
    :class:`CaseError` naming the file and the attribute: a damaged header never escapes as a bare ValueError."""
    try:
        value = getattr(ds, keyword, None)
        if value is None or value == "":
            return default
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return [cast(v) for v in value]
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        shown = str(ds.get(keyword, "")) if hasattr(ds, "get") else ""
        raise CaseError(path, f"malformed DICOM header: {keyword} {shown[:40]!r} is not a number") from None


def _from_dicom(paths: list[Path], modality: str | None, origin: Path) -> Case:
    try:
        with (
            warnings.catch_warnings()
        ):  # pydicom warns of each invalid value; the error below names the one that matters
            warnings.simplefilter("ignore", UserWarning)
            return _dicom_case(paths, modality, origin)
    except CaseError:
        raise
    except (TypeError, ValueError) as exc:  # geometry that does not parse (positions, orientations)
        raise CaseError(origin, f"malformed DICOM header ({type(exc).__name__}: {exc})") from None


def _dicom_case(paths: list[Path], modality: str | None, origin: Path) -> Case:
    headers = [(p, _dcmread(p, header_only=True)) for p in paths]
    images = [(p, ds) for p, ds in headers if _non_image(ds) is None]
    if not images:  # a folder may hold a SEG or a report beside its images; those are skipped, never read as pixels
        path, ds = headers[0]
        raise CaseError(
            path if len(headers) == 1 else origin,
            f"this DICOM is {_non_image(ds)}, not an image",
            accepted="image DICOM (CT, MR, CR/DX, US, ...)",
        )
    with_pixels = [(p, ds) for p, ds in images if "Rows" in ds and "Columns" in ds]
    if not with_pixels:
        raise CaseError(
            origin,
            "DICOM has no image pixel data (a report, structure set or plan?)",
            accepted="image DICOM (CT, MR, CR/DX, US, ...)",
        )
    path, first = with_pixels[0]
    frames = _header(path, first, "NumberOfFrames", 1, int) or 1
    samples = _header(path, first, "SamplesPerPixel", 1, int) or 1
    rows, cols = _header(path, first, "Rows", 0, int), _header(path, first, "Columns", 0, int)
    in_plane = _header(path, first, "PixelSpacing", None) or _header(path, first, "ImagerPixelSpacing", [1.0, 1.0])
    if len(in_plane) != 2:
        raise CaseError(path, f"malformed DICOM header: PixelSpacing has {len(in_plane)} values, not 2")
    inferred = DICOM_MODALITY.get(str(getattr(first, "Modality", "")), "other")
    if len(with_pixels) == 1 and frames == 1:
        shape = (rows, cols)
        spacing = tuple(in_plane)
        channels = ("r", "g", "b") if samples == 3 else ("image",)
    else:
        if samples != 1:
            raise CaseError(
                origin,
                "multi-frame colour DICOM (cine loop) is not supported",
                accepted="single colour frames or greyscale series",
            )
        with_pixels = _sort_slices(with_pixels)
        depth = frames if len(with_pixels) == 1 else len(with_pixels)
        shape = (rows, cols, depth)
        spacing = (in_plane[0], in_plane[1], _slice_gap(with_pixels, first))
        for p, ds in with_pixels:
            size = (_header(p, ds, "Rows", 0, int), _header(p, ds, "Columns", 0, int))
            if size != (rows, cols):
                raise CaseError(p, f"slice size {size} differs from the series' {(rows, cols)}")
        channels = ("image",)
    _check_shape(origin, shape, len(channels))
    spacing = _check_spacing(origin, spacing)
    return Case(
        id=_content_id([p for p, _ in with_pixels]),
        paths=tuple(p for p, _ in with_pixels),
        modality=modality or inferred,
        channels=channels,
        shape=shape,
        spacing=spacing,
    )


def _sort_slices(items):
    def key(item):
        path, ds = item
        pos = _header(path, ds, "ImagePositionPatient", None)
        ori = _header(path, ds, "ImageOrientationPatient", None)
        if pos is not None and ori is not None and len(ori) == 6:
            normal = np.cross(np.asarray(ori[:3], float), np.asarray(ori[3:], float))
            return float(np.dot(normal, np.asarray(pos, float)))
        return float(_header(path, ds, "InstanceNumber", 0) or 0)

    return sorted(items, key=key)


def _slice_gap(items, first) -> float:
    if len(items) > 1:
        a, b = (_header(path, ds, "ImagePositionPatient", None) for path, ds in items[:2])
        if a is not None and b is not None:
            gap = float(np.linalg.norm(np.asarray(b, float) - np.asarray(a, float)))
            if gap > 0:
                return gap
    path = items[0][0]
    return float(
        _header(path, first, "SpacingBetweenSlices", None) or _header(path, first, "SliceThickness", None) or 1.0
    )


def _dicom_pixels(case: Case) -> np.ndarray:
    """Planes are written into one preallocated array, so the peak is the result plus one file's pixels."""
    out = np.empty((len(case.channels), *case.shape), np.float32)
    try:
        if len(case.paths) > 1:  # a series: one plane per file, along the last axis
            for i, path in enumerate(case.paths):
                out[0, ..., i] = _dicom_plane(path)
        elif case.dims == 3:  # multi-frame: (frames, rows, cols) -> (rows, cols, frames)
            out[0] = np.moveaxis(_dicom_plane(case.paths[0]), 0, -1)
        else:
            plane = _dicom_plane(case.paths[0])
            out[:] = np.moveaxis(plane, -1, 0) if plane.ndim == 3 else plane
    except ValueError as exc:  # the decoded pixels do not have the shape the header declares
        raise CaseError(case.paths[0], f"DICOM pixel data does not match its header ({exc})") from None
    return out


def _dicom_plane(path: Path) -> np.ndarray:
    ds = _dcmread(path, header_only=False)
    try:
        arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise CaseError(path, f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    slope = _header(path, ds, "RescaleSlope", 1.0) or 1.0
    intercept = _header(path, ds, "RescaleIntercept", 0.0) or 0.0
    if slope != 1.0:
        arr *= np.float32(slope)
    if intercept != 0.0:
        arr += np.float32(intercept)
    return arr


# ---------------------------------------------------------------- PNG / JPEG


def _from_picture(path: Path, modality: str | None) -> Case:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            size, mode = im.size, im.mode
    except Image.DecompressionBombError as exc:  # refused from the header, before any pixel is decoded
        raise CaseError(path, f"image declares too many pixels to be a scan ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CaseError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    shape = (size[1], size[0])
    channels = ("image",) if mode in ("L", "I", "I;16", "F", "1", "LA") else ("r", "g", "b")
    _check_shape(path, shape, len(channels))
    return Case(
        id=_content_id([path]),
        paths=(path,),
        modality=modality or _sidecar_modality(path) or "other",
        channels=channels,
        shape=shape,
        spacing=(1.0, 1.0),
    )


def _picture_pixels(case: Case) -> np.ndarray:
    from PIL import Image

    path = case.paths[0]
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if len(case.channels) == 3 else ("F" if im.mode in ("I", "I;16", "F") else "L"))
            arr = np.asarray(im, dtype=np.float32)
    except OSError as exc:
        raise CaseError(path, f"image data is truncated or corrupt ({exc})") from None
    return np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr[None]


# ---------------------------------------------------------------- pixels


def _read_pixels(case: Case) -> np.ndarray:
    kind = _kind(case.paths[0])
    if kind == "nifti":
        data = np.empty((len(case.paths), *case.shape), np.float32)
        for path, channel in zip(case.paths, data):
            _nifti_data(path, channel)
    elif kind == "dicom":
        data = _dicom_pixels(case)
    else:
        data = _picture_pixels(case)
    data = np.ascontiguousarray(data, dtype=np.float32)
    bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in data)  # a channel's mask at a time
    if bad:
        raise CaseError(case.paths[0], f"image contains {bad:,} NaN/inf voxels")
    for name, channel, path in zip(
        case.channels,
        data,
        case.paths if len(case.paths) == len(case.channels) else [case.paths[0]] * len(case.channels),
    ):
        if float(channel.max()) == float(channel.min()):
            raise CaseError(path, f"channel {name!r} is blank (every voxel equals {float(channel.min()):g})")
    return data
