"""The image memory: embeddings of solved cases with their metadata, queried for similar verified cases.

File layout: one folder holding ``memory.bin`` (the current version) and ``.lock``. ``memory.bin`` is one unit:
magic, a JSON header (version, kind, dim, entry ids and metadata, sha256 of the body), then the body: the float32
embeddings and, for IVF/HNSW, the serialised FAISS index (the flat kind's float16 codes are rebuilt from the
embeddings on load, about as fast as reading them). One file for index and metadata means they never disagree.

Writers (benchmark workers, the training loop, the UI) take an exclusive ``fcntl.flock`` on ``.lock`` around the
whole read-modify-write: reload the newest version, change it, write ``memory.bin`` through a temporary file,
fsync and ``os.replace``. A writer killed at any point leaves the previous ``memory.bin`` intact (its temporary
file is removed by the next writer, which alone may hold the lock). Readers take no lock: every query checks the
file's inode/mtime/size and reloads when another process has replaced it. Each write rewrites the whole file
(about 130 MB at 100k entries), so callers that add many entries should use :meth:`ImageMemory.add_many`.

Encoder: the header names the encoder that made the vectors (``encoder``); a handle opened for another encoder
refuses to add to or query the memory with a message naming both, since vectors from two encoders are not
comparable. Files written before the header carried it were all made by the case encoder and are read as such.

Filtering: ``where`` is an equality match on metadata keys, turned into a row bitmap (cached per version and
key/value) and searched inside FAISS, so a filtered query returns k hits whenever k entries match (see
:mod:`macro.memory.index`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import struct
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from macro.artifacts import atomic_write_bytes
from macro.config import Home
from macro.errors import CaseError
from macro.memory import index as faiss_index
from macro.memory.encoder import ENCODER_ID

FILE = "memory.bin"
LOCK = ".lock"
MAGIC = b"MACROMEM"
FORMAT = 1
_PREFIX = struct.Struct("<8sIQ")  # magic, format, header length
T = TypeVar("T")
IVF_RETRAIN_GROWTH = 4  # an IVF index is re-trained once it holds 4x the entries it was trained on


@dataclass(frozen=True)
class MemoryHit:
    id: str
    score: float
    meta: dict


@dataclass
class _Snapshot:
    """One version of the memory as loaded in this process."""

    version: int = 0
    kind: str = "flat"
    dim: int | None = None
    ids: list[str] = field(default_factory=list)
    metas: list[dict] = field(default_factory=list)
    vectors: np.ndarray | None = None
    index: object | None = None
    trained_n: int = 0
    encoder: str | None = None
    masks: dict = field(default_factory=dict)
    counts: dict | None = None

    def tallies(self) -> dict:
        """Entries per family and per verification state, counted once per version."""
        if self.counts is None:
            self.counts = {
                key: dict(Counter(str(m.get(key)) for m in self.metas)) for key in ("family", "verification")
            }
        return self.counts

    def mask(self, where: dict) -> np.ndarray:
        """Rows whose metadata equals ``where`` on every key; per-key bitmaps are cached for this version."""
        allowed = np.ones(len(self.ids), bool)
        for key, value in where.items():
            cache_key = (key, json.dumps(value, sort_keys=True))
            if cache_key not in self.masks:
                self.masks[cache_key] = np.fromiter(
                    (m.get(key, _MISSING) == value for m in self.metas), bool, len(self.metas)
                )
            allowed &= self.masks[cache_key]
        return allowed


_MISSING = object()


class ImageMemory:
    """Process-safe store of (embedding, metadata) entries in a folder (default: ``$MACRO_HOME/memory``).

    ``kind`` is the index written by this handle's writes: ``flat`` (exact; the default for a new memory),
    ``ivf`` or ``hnsw``. ``None`` keeps the kind already on disk. Opening an existing memory with another kind
    converts it at the next write; until then queries use the stored index. ``encoder`` names what makes the
    vectors this handle adds and queries with (default: the case encoder of :mod:`macro.memory.encoder`)."""

    def __init__(self, path: str | Path | None = None, kind: str | None = None, encoder: str = ENCODER_ID):
        if kind is not None and kind not in faiss_index.KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {faiss_index.KINDS}")
        self.path = Path(path) if path is not None else Home.current().memory
        self.kind = kind
        self.encoder = encoder
        self._snapshot = _Snapshot(kind=kind or "flat")
        self._stamp: tuple | None = None
        self._thread_lock = threading.RLock()

    @property
    def file(self) -> Path:
        return self.path / FILE

    # ------------------------------------------------------------------ writes

    def add(self, embedding: np.ndarray, meta: dict, replacing: dict | None = None) -> str:
        return self.add_many(np.asarray(embedding)[None], [meta], replacing)[0]

    def add_many(self, embeddings: np.ndarray, metas: Sequence[dict], replacing: dict | None = None) -> list[str]:
        """Append entries in one write; returns their ids. Embeddings are L2-normalised before storing. Entries whose
        metadata match ``replacing`` are dropped in the same write, so adding an entry for the same trajectory again
        replaces it instead of duplicating it."""
        vectors = _unit_rows(embeddings)
        if len(vectors) != len(metas):
            raise ValueError(f"{len(vectors)} embeddings but {len(metas)} metadata dicts")
        metas = json.loads(json.dumps(list(metas)))  # a private copy, and non-JSON values fail here
        ids = [f"mem-{uuid.uuid4().hex[:16]}" for _ in metas]

        def append(snap: _Snapshot) -> tuple[list[str], _Snapshot]:
            self._check_encoder(snap)
            if replacing and snap.ids and (stale := snap.mask(replacing)).any():
                keep = ~stale  # dropped in this write; the index is rebuilt below (index None)
                ids_kept = [i for i, k in zip(snap.ids, keep) if k]
                metas_kept = [m for m, k in zip(snap.metas, keep) if k]
                snap = _Snapshot(
                    snap.version, snap.kind, snap.dim, ids_kept, metas_kept, snap.vectors[keep], None, 0, snap.encoder
                )
            if snap.dim is not None and vectors.shape[1] != snap.dim:
                raise ValueError(
                    f"{self.file}: embeddings have {vectors.shape[1]} dimensions, the memory holds {snap.dim}"
                )
            all_vectors = vectors if snap.vectors is None else np.concatenate([snap.vectors, vectors])
            kind = self.kind or snap.kind
            if (
                snap.index is None
                or kind != snap.kind
                or (kind == "ivf" and len(all_vectors) > IVF_RETRAIN_GROWTH * snap.trained_n)
            ):
                index, trained_n = faiss_index.build(kind, all_vectors), len(all_vectors)
            else:
                index, trained_n = faiss_index.extended(snap.index, vectors), snap.trained_n
            return ids, _Snapshot(
                snap.version + 1,
                kind,
                vectors.shape[1],
                snap.ids + ids,
                snap.metas + metas,
                all_vectors,
                index,
                trained_n,
                self.encoder,
            )

        return self._write(append)

    def remove(self, ids: Iterable[str] = (), where: dict | None = None) -> int:
        """Drop entries by id (unknown ids are ignored) and, with ``where``, every entry whose metadata match it;
        returns how many were removed. Rebuilds the index."""
        drop = set(ids)

        def prune(snap: _Snapshot) -> tuple[int, _Snapshot | None]:
            keep = np.array([i not in drop for i in snap.ids], bool)
            if where and snap.ids:
                keep &= ~snap.mask(where)
            if keep.all():
                return 0, None
            return int((~keep).sum()), _pruned(snap, keep, self.kind or snap.kind)

        return self._write(prune)

    def _write(self, change: Callable[[_Snapshot], tuple[T, _Snapshot | None]]) -> T:
        """Under the folder lock: reload the newest version, apply ``change`` and write its new snapshot (if any)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(self.path / LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                for stale in self.path.glob(f".{FILE}.*.tmp"):  # left by a killed writer; only the lock holder writes
                    stale.unlink(missing_ok=True)
                result, snapshot = change(self._load_latest())
                if snapshot is not None:
                    atomic_write_bytes(self.file, _encode(snapshot))
                    self._snapshot, self._stamp = snapshot, _stamp(self.file)
                return result
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ reads

    def query(
        self, embedding: np.ndarray, k: int = 5, floor: float = 0.0, where: dict | None = None
    ) -> list[MemoryHit]:
        """The k most similar entries (cosine) with score >= floor and metadata matching ``where``, best first.

        The default floor of 0 leaves out anti-correlated entries; pass -1 for a plain top k."""
        snap = self._load_latest()
        if not snap.ids or k <= 0:
            return []
        self._check_encoder(snap)
        query = _unit_rows(np.asarray(embedding)[None])[0]
        if len(query) != snap.dim:
            raise ValueError(f"{self.file}: query has {len(query)} dimensions, the memory holds {snap.dim}")
        allowed = snap.mask(where) if where else None
        scores, rows = faiss_index.search(snap.index, snap.vectors, query, k, allowed)
        return [MemoryHit(snap.ids[r], float(s), dict(snap.metas[r])) for s, r in zip(scores, rows) if s >= floor]

    def stats(self) -> dict:
        snap = self._load_latest()
        tallies = snap.tallies()
        return {
            "path": str(self.path),
            "entries": len(snap.ids),
            "dim": snap.dim,
            "kind": snap.kind,
            "encoder": snap.encoder,
            "version": snap.version,
            "bytes": self._stamp[2] if self._stamp else 0,
            "families": tallies["family"],
            "verification": tallies["verification"],
        }

    def _check_encoder(self, snap: _Snapshot) -> None:
        if snap.ids and snap.encoder != self.encoder:
            raise CaseError(
                self.file,
                f"the memory holds vectors from encoder {snap.encoder!r}, not from {self.encoder!r}; vectors of two "
                "encoders are not comparable: use another memory folder, or move this one aside to start afresh",
            )

    def __len__(self) -> int:
        return len(self._load_latest().ids)

    def _load_latest(self) -> _Snapshot:
        with self._thread_lock:
            stamp = _stamp(self.file)
            if stamp != self._stamp:
                self._snapshot = _decode(self.file) if stamp is not None else _Snapshot(kind=self.kind or "flat")
                self._stamp = stamp
            return self._snapshot


def _pruned(snap: _Snapshot, keep: np.ndarray, kind: str) -> _Snapshot:
    """The next version holding only the rows ``keep`` marks, its index rebuilt."""
    vectors = snap.vectors[keep]
    return _Snapshot(
        snap.version + 1,
        kind,
        snap.dim,
        [i for i, k in zip(snap.ids, keep) if k],
        [m for m, k in zip(snap.metas, keep) if k],
        vectors,
        faiss_index.build(kind, vectors),
        len(vectors),
        snap.encoder,
    )


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a (n, d) array or a (d,) vector, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("embeddings must be finite and non-zero")
    return np.ascontiguousarray(x / norms)


def _encode(snap: _Snapshot) -> bytes:
    vectors = snap.vectors.astype("<f4", copy=False).tobytes()
    index = b"" if snap.kind == "flat" else faiss_index.to_bytes(snap.index)
    body_hash = hashlib.sha256(vectors)
    body_hash.update(index)
    header = json.dumps(
        {
            "version": snap.version,
            "kind": snap.kind,
            "dim": snap.dim,
            "trained_n": snap.trained_n,
            "encoder": snap.encoder,
            "ids": snap.ids,
            "metas": snap.metas,
            "vectors_bytes": len(vectors),
            "index_bytes": len(index),
            "sha256": body_hash.hexdigest(),
        }
    ).encode()
    return b"".join([_PREFIX.pack(MAGIC, FORMAT, len(header)), header, vectors, index])


def _decode(path: Path) -> _Snapshot:
    """Load and verify one version; every defect raises CaseError naming the file."""
    data = memoryview(path.read_bytes())
    if len(data) < _PREFIX.size:
        raise CaseError(path, f"memory file is truncated ({len(data)} bytes)")
    magic, fmt, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CaseError(path, "not a MACRO image-memory file (bad magic bytes)")
    if fmt != FORMAT:
        raise CaseError(path, f"memory file format {fmt} is not supported", accepted=f"format {FORMAT}")
    try:
        header = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + header_len]))
        dim, n, vectors_len, index_len = (
            header["dim"],
            len(header["ids"]),
            header["vectors_bytes"],
            header["index_bytes"],
        )
        kind, version, metas, digest = header["kind"], header["version"], header["metas"], header["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CaseError(path, f"memory header is unreadable ({exc.__class__.__name__}: {exc})") from None
    body = data[_PREFIX.size + header_len :]
    if (
        len(body) != vectors_len + index_len
        or vectors_len != n * (dim or 0) * 4
        or len(metas) != n
        or kind not in faiss_index.KINDS
    ):
        raise CaseError(
            path,
            f"memory file is truncated or inconsistent (body {len(body)} bytes, header expects "
            f"{vectors_len} + {index_len} for {n} entries of dim {dim})",
        )
    if hashlib.sha256(body).hexdigest() != digest:
        raise CaseError(path, "memory file is corrupt (sha256 of the body does not match its header)")
    vectors = np.frombuffer(body[:vectors_len], dtype="<f4").reshape(n, dim or 0).astype(np.float32)
    if kind == "flat":
        index = faiss_index.build("flat", vectors)
    else:
        try:
            index = faiss_index.from_bytes(body[vectors_len:])
        except RuntimeError as exc:
            raise CaseError(path, f"the stored {kind} index cannot be read ({exc})") from None
    encoder = header.get("encoder", ENCODER_ID)
    return _Snapshot(version, kind, dim, header["ids"], metas, vectors, index, header.get("trained_n", n), encoder)
