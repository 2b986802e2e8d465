"""Learnt weights: one way to save, verify and load them, and one rule for which copy is used.

Every model the project learns has a :class:`Slot`: a *shipped* copy inside the installed package (read-only at
run time, regenerated only by a command given an explicit ``--out``) and a *home* copy under
``MACRO_HOME/models/<slot>``, which every command that learns or retrains at run time writes, and which takes
precedence over the shipped copy once it exists. A read-only install therefore works, and one user's retraining
never changes another user's tools.

A folder holds a ``manifest.json`` and the files it names. Files are named by content
(``<stem>-<sha12><suffix>``) and written before the manifest, each atomically, so a killed writer leaves the previous
manifest and its files intact; files the new manifest no longer names are removed afterwards. Loading checks every
file's sha256, so a damaged or replaced file is refused with a :class:`~macro.errors.WeightsError` naming the file and
the command that regenerates it, never silently used. Tensors are stored as fp16 safetensors and loaded as fp32.

The manifest records what a reader needs to trust and reproduce the weights: the command, seed, data (as a dataset
name or a path relative to ``MACRO_HOME``, never the building machine's absolute folder), held-out metrics and library
versions. ``manifest["sha256"]`` is the model's version id: the file's sha256 for one file, else a digest of them all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, TypeVar

from macro.artifacts import atomic_write_bytes
from macro.config import Home
from macro.errors import ModelUnavailable, WeightsError

MANIFEST = "manifest.json"
LIBRARIES = ("torch", "numpy", "safetensors", "transformers", "peft", "trl", "monai", "faiss-cpu")


@dataclass(frozen=True)
class Slot:
    """Where one model lives: ``name`` (e.g. ``classification/derm``), the shipped folder and the command that makes
    the model (``regenerate``, quoted in every error about it)."""

    name: str
    shipped: Path
    regenerate: str

    def home_dir(self, home: Home | None = None) -> Path:
        return (home or Home.current()).models / self.name

    def active(self, home: Home | None = None) -> Path:
        """The copy in use: the home copy once it has a manifest, else the shipped one."""
        own = self.home_dir(home)
        return own if (own / MANIFEST).is_file() else self.shipped

    def origin(self, home: Home | None = None) -> str:
        return "home" if self.active(home) != self.shipped else "shipped"

    def target(self, out: Path | None, home: Home | None = None) -> Path:
        """Where a command that learns writes: ``--out`` when given, else the home copy."""
        return Path(out) if out is not None else self.home_dir(home)


SLOTS: dict[str, Slot] = {}


def slot(name: str, shipped: Path, regenerate: str) -> Slot:
    """Declare a model's slot (each tool family does so at import), so ``macro doctor`` can list every model."""
    declared = SLOTS.setdefault(name, Slot(name, Path(shipped), regenerate))
    if declared.shipped != Path(shipped):
        raise ValueError(f"weights slot {name!r} is already declared for {declared.shipped}")
    return declared


def software() -> dict[str, str]:
    """Python and library versions, recorded in every manifest."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def portable(path: Path | str) -> str:
    """A data folder as a manifest records it: relative to MACRO_HOME when inside it, else its folder name only."""
    path = Path(path).resolve()
    root = Home.current().root.resolve()
    try:
        return "$MACRO_HOME/" + path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _content_name(logical: str, digest: str) -> str:
    stem, dot, suffix = logical.partition(".")
    return f"{stem}-{digest[:12]}{dot}{suffix}"


def _model_id(files: dict[str, dict]) -> str:
    if len(files) == 1:
        return next(iter(files.values()))["sha256"]
    return _digest(json.dumps({name: f["sha256"] for name, f in sorted(files.items())}).encode())


def write(
    folder: Path, payloads: dict[str, bytes], manifest: dict, before_commit: Callable[[dict], None] | None = None
) -> dict:
    """Write ``payloads`` (logical file name -> bytes) and the manifest into ``folder``; returns the manifest.

    The manifest gains ``files`` (logical name -> file, sha256, bytes), ``sha256`` (the model id), ``software`` and,
    unless given, ``created``. ``before_commit(manifest)`` runs once the files are written and before the manifest
    makes them the model in use (an audit record naming the new model's sha256 goes there: if it fails, the old model
    stays in use)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for logical, data in payloads.items():
        digest = _digest(data)
        name = _content_name(logical, digest)
        atomic_write_bytes(folder / name, data)
        files[logical] = {"file": name, "sha256": digest, "bytes": len(data)}
    manifest = {"created": now(), **manifest, "files": files, "sha256": _model_id(files), "software": software()}
    if before_commit is not None:
        before_commit(manifest)
    atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    keep = {f["file"] for f in files.values()}
    for logical in payloads:
        stem, dot, suffix = logical.partition(".")
        for old in folder.glob(f"{stem}-*{dot}{suffix}"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
    return manifest


def read_manifest(folder: Path, regenerate: str) -> dict:
    """The manifest of ``folder``; :class:`ModelUnavailable` when there is none, :class:`WeightsError` when it is
    unreadable or names no files."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelUnavailable(f"{folder}: no weights here; make them with: {regenerate}")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not all(isinstance(f.get("file"), str) for f in files.values()):
            raise ValueError("'files' must map names to {'file', 'sha256'}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(path, f"unreadable weights manifest ({type(exc).__name__}: {exc})", regenerate) from None
    return manifest


def read(folder: Path, regenerate: str, names: tuple[str, ...] | None = None) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the verified bytes of its files (or only ``names``)."""
    manifest = read_manifest(folder, regenerate)
    payloads = {}
    for logical, entry in manifest["files"].items():
        if names is not None and logical not in names:
            continue
        path = Path(folder) / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise WeightsError(
                path, f"weights file is missing or unreadable ({exc.strerror or exc})", regenerate
            ) from None
        if _digest(data) != entry.get("sha256"):
            raise WeightsError(
                path, "weights file does not match the sha256 in its manifest (damaged or replaced)", regenerate
            )
        payloads[logical] = data
    if names is not None and (missing := set(names) - set(payloads)):
        raise WeightsError(Path(folder) / MANIFEST, f"the manifest lists no {', '.join(sorted(missing))}", regenerate)
    return manifest, payloads


def verify(folder: Path, regenerate: str) -> dict:
    """Check every file of ``folder`` against its manifest; returns the manifest."""
    return read(folder, regenerate)[0]


def save_tensors(
    folder: Path,
    tensors: dict[str, dict[str, Any]],
    manifest: dict,
    before_commit: Callable[[dict], None] | None = None,
) -> dict:
    """Write state dicts (logical ``*.safetensors`` name -> {key: tensor}) in fp16 with the manifest (``write``)."""
    import torch
    from safetensors.torch import save

    payloads = {}
    for logical, state in tensors.items():
        half = {
            k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in state.items()
        }
        payloads[logical] = save(half, metadata={"format": "pt"})
    return write(folder, payloads, {**manifest, "dtype": "float16"}, before_commit)


def load_tensors(folder: Path, regenerate: str, names: tuple[str, ...] | None = None) -> tuple[dict, dict[str, dict]]:
    """The manifest and the verified state dicts (floating tensors as fp32) of ``folder``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    manifest, payloads = read(folder, regenerate, names)
    states = {}
    for logical, data in payloads.items():
        try:
            state = load(data)
        except (SafetensorError, ValueError) as exc:
            path = Path(folder) / manifest["files"][logical]["file"]
            raise WeightsError(path, f"not a safetensors file ({exc})", regenerate) from None
        states[logical] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return manifest, states


T = TypeVar("T")
_LOAD_LOCK = threading.RLock()  # re-entrant: a load may itself call load_once
_LOADED: dict[str, tuple[Any, Any]] = {}


def load_once(key: str, load: Callable[[], T], manifest: Path | None = None) -> T:
    """``load()``'s result, kept per process under ``key``; with a ``manifest``, loaded again when that file (its
    path or modification time) changes, so retrained weights or a newly learnt bank are used without a restart."""
    stamp = None
    if manifest is not None:
        stamp = (str(manifest), manifest.stat().st_mtime_ns if manifest.exists() else None)
    with _LOAD_LOCK:
        hit = _LOADED.get(key)
        if hit is None or hit[0] != stamp:
            hit = _LOADED[key] = (stamp, load())
        return hit[1]
