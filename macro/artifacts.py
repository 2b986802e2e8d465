"""Artifact store: tools write masks, heatmaps and renders here and pass only ids through the conversation.

An artifact id is ``<run_id>/<name>``; the file lives at ``<root>/<run_id>/<name>`` with a ``.json`` sidecar holding
kind and metadata. Run folders are created on the first write, so a run that fails early leaves nothing behind,
and every write goes through a temporary file and ``os.replace`` so readers in other processes never see half a file.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from macro.plugins import KIND_GROUP, declared

KINDS = ("image", "mask", "heatmap", "render", "scalar", "label", "text")


def kinds() -> tuple[str, ...]:
    """The built-in artifact kinds, then those installed plug-ins declare (:mod:`macro.plugins`)."""
    return KINDS + tuple(k for k in declared(KIND_GROUP) if k not in KINDS)


@dataclass(frozen=True)
class Artifact:
    id: str
    kind: str
    path: Path
    meta: dict = field(default_factory=dict)

    def ref(self) -> dict:
        return {"id": self.id, "kind": self.kind, "path": str(self.path), **({"meta": self.meta} if self.meta else {})}


def _file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask (read without changing it where the
    kernel reports it, since setting it is process-wide)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write through a temporary file and ``os.replace``. The file gets the usual umask-based mode (``mkstemp``
    alone would make it 0o600), so a MACRO_HOME shared by a group stays readable by the group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def locked(folder: Path):
    """Exclusive advisory lock on ``folder/.lock`` around a read-modify-write, across processes; readers that only
    read files written with :func:`atomic_write_bytes` need none."""
    return locked_file(Path(folder) / ".lock")


@contextmanager
def locked_file(path: Path):
    """Exclusive advisory lock on the file ``path`` (created if needed), across processes and threads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ArtifactStore:
    """Artifacts of one run (one agent turn or one direct tool call)."""

    def __init__(self, root: Path, run_id: str | None = None):
        self.root = Path(root)
        self.run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"

    @property
    def run_dir(self) -> Path:
        return self.root / self.run_id

    def _new(self, kind: str, stem: str, suffix: str) -> tuple[str, Path]:
        if kind not in kinds():
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {kinds()}")
        name = f"{stem}-{uuid.uuid4().hex[:6]}{suffix}"
        return f"{self.run_id}/{name}", self.run_dir / name

    def _finish(self, art_id: str, kind: str, path: Path, meta: dict) -> Artifact:
        atomic_write_bytes(
            path.with_name(path.name + ".json"), json.dumps({"id": art_id, "kind": kind, "meta": meta}).encode()
        )
        return Artifact(art_id, kind, path, meta)

    def save_nifti(
        self, array: np.ndarray, affine: np.ndarray | None, kind: str, stem: str, meta: dict | None = None
    ) -> Artifact:
        import nibabel as nib

        art_id, path = self._new(kind, stem, ".nii.gz")
        img = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine)
        atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=4, mtime=0))
        return self._finish(art_id, kind, path, meta or {})

    def save_png(self, rgb: np.ndarray, kind: str, stem: str, meta: dict | None = None) -> Artifact:
        import io

        from PIL import Image

        art_id, path = self._new(kind, stem, ".png")
        buf = io.BytesIO()
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        return self._finish(art_id, kind, path, meta or {})

    def get(self, art_id: str) -> Artifact:
        """Resolve any id written by any run under the same root; nothing outside it (an absolute id, ``..``, a link
        out of the root) resolves."""
        path = self.root / art_id
        sidecar = path.with_name(path.name + ".json")
        inside = not Path(art_id).is_absolute() and ".." not in Path(art_id).parts
        if not inside or not sidecar.is_file() or not sidecar.resolve().is_relative_to(self.root.resolve()):
            raise KeyError(f"unknown artifact {art_id!r}")
        info = json.loads(sidecar.read_text())
        return Artifact(info["id"], info["kind"], path, info.get("meta", {}))


STALE_TMP_SECONDS = 3600  # a temporary file this old was left by a killed writer, not one still writing


def collect(
    root: Path, older_than_days: float | None = None, max_bytes: int | None = None, dry_run: bool = False, now=None
) -> dict:
    """Free the artifact store under ``root``: whole runs older than ``older_than_days``, then the oldest runs until
    the store fits in ``max_bytes``, and temporary files that killed writers left (older than an hour). A thread that
    refers to a removed artifact gets a failed call naming it, not a crash. ``dry_run`` only reports."""
    import shutil
    import time

    root, now = Path(root), now or time.time()
    runs = []
    for run in sorted(root.glob("run-*")) if root.is_dir() else []:
        files = [f for f in run.rglob("*") if f.is_file()]
        newest = max((f.stat().st_mtime for f in files), default=run.stat().st_mtime)
        runs.append((newest, sum(f.stat().st_size for f in files), run))
    runs.sort()  # oldest first
    total = sum(size for _, size, _ in runs)
    drop = {run for newest, _, run in runs if older_than_days is not None and now - newest > older_than_days * 86400}
    left = total - sum(size for _, size, run in runs if run in drop)
    for _, size, run in runs:
        if max_bytes is None or left <= max_bytes:
            break
        if run not in drop:
            drop.add(run)
            left -= size
    stale = [f for f in root.rglob(".*.tmp") if now - f.stat().st_mtime > STALE_TMP_SECONDS] if root.is_dir() else []
    if not dry_run:
        for run in drop:
            shutil.rmtree(run, ignore_errors=True)
        for f in stale:
            f.unlink(missing_ok=True)
    return {
        "root": str(root),
        "runs_removed": len(drop),
        "bytes_freed": total - left,
        "runs_kept": len(runs) - len(drop),
        "bytes_kept": left,
        "tmp_removed": len(stale),
        "dry_run": dry_run,
    }
