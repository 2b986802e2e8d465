"""FAISS indexes behind the image memory: exact flat search by default, IVF or HNSW for large memories.

All kinds use inner product on L2-normalised vectors, so a score is the cosine similarity. The row number in the
index is the entry's position in the memory; filtering (``where``) is a bitmap over rows handed to FAISS as an
``IDSelector``: the flat index then stays exact and returns k hits whenever k entries pass the filter. IVF and HNSW
search the filter inside their probed lists / graph walk and can come back short when the allowed rows are rare;
:func:`search` then falls back to an exact scan of just the allowed rows, so a filtered query still yields k hits.

The flat kind is exact but scans half the bytes of a float32 flat index: it searches float16 copies of the
vectors (FAISS ``IndexScalarQuantizer`` QT_fp16) for REFINE x k candidates, re-scores them with the float32
vectors and sorts. For unit vectors a float16 score is within FP16_TOLERANCE of the exact one (each component is
rounded by at most 2^-11 of itself, so the error is at most 2^-11 by Cauchy-Schwarz; the tolerance doubles that).
An entry outside the candidates therefore scores at most (lowest candidate float16 score + tolerance) exactly;
when the k-th re-scored candidate is not above that bound the query falls back to a full float32 scan, so the
result is always the exact top k. The scan is memory-bound, so halving the bytes halves the latency (measured:
100k x 320-d p50 about 4 ms instead of 11 ms on one core).

A single query is memory-bound and tiny, and on a shared 2-core machine OpenMP's thread start-up costs 10-30 ms
per call (measured), so searches run on one OpenMP thread; index construction keeps FAISS's thread count.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import faiss
import numpy as np

KINDS = ("flat", "ivf", "hnsw")
HNSW_M = 16  # links per node: 2x smaller graph and build than M=32, recall measured by ``macro eval memory``
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 256  # recall@5 0.81 at 1M synthetic vectors, about 1 ms (``macro eval memory``)
REFINE = 4  # float16 candidates per requested hit in the flat kind
FP16_TOLERANCE = 1e-3
IVF_TRAIN_MAX = 64_000  # k-means sample cap: keeps training at 1M entries to seconds
IVF_NPROBE_FRACTION = 1 / 16  # lists probed per query (recall@5 0.98 at 1M), at least IVF_NPROBE_MIN
IVF_NPROBE_MIN = 8


def ivf_lists(n: int) -> int:
    """About sqrt(n) lists with >= 39 training points each (FAISS's k-means minimum); one list below that."""
    return max(1, min(int(math.sqrt(n)), n // 39, 4096))


def build(kind: str, vectors: np.ndarray, seed: int = 0) -> faiss.Index:
    """A new index of ``kind`` over ``vectors`` (n, d), trained on them where the kind needs training."""
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivf":
        lists = ivf_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = (
            vectors
            if n <= IVF_TRAIN_MAX
            else vectors[np.random.default_rng(seed).choice(n, IVF_TRAIN_MAX, replace=False)]
        )
        index.cp.seed = seed
        index.cp.min_points_per_centroid = (
            1  # ivf_lists already keeps >= 39 points per list; tiny memories use one list
        )
        if n:  # an empty memory keeps an untrained index; the first add re-trains (see ImageMemory.add_many)
            index.train(np.ascontiguousarray(sample))
        index.nprobe = max(IVF_NPROBE_MIN, round(lists * IVF_NPROBE_FRACTION))
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")
    if n:
        index.add(np.ascontiguousarray(vectors))
    return index


def extended(index: faiss.Index, vectors: np.ndarray) -> faiss.Index:
    """A copy of ``index`` with ``vectors`` added: snapshots stay immutable while other threads search them."""
    copy = faiss.clone_index(index)
    copy.add(np.ascontiguousarray(vectors))
    return copy


@contextmanager
def one_thread():
    """Run FAISS on one OpenMP thread for the block (see the module docstring for why)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def search(
    index: faiss.Index, vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) for one normalised query, best first; ``allowed`` is a boolean mask over rows."""
    n = index.ntotal if allowed is None else int(allowed.sum())
    k = min(k, n)
    if k == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    q = np.ascontiguousarray(query, dtype=np.float32)
    flat = isinstance(index, faiss.IndexScalarQuantizer)
    fetch = min(REFINE * k, n) if flat else k
    with one_thread():
        if allowed is None:
            scores, rows = index.search(q[None], fetch)
        else:
            bitmap = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
            scores, rows = index.search(q[None], fetch, params=_params(index, selector))
    scores, rows = scores[0], rows[0]
    found = rows >= 0
    scores, rows = scores[found], rows[found]
    if len(rows) < fetch:  # an approximate index missed filtered rows
        return _exact(vectors, q, k, None if allowed is None else np.flatnonzero(allowed))
    if not flat:
        return scores, rows
    exact = vectors[rows] @ q
    order = np.argsort(-exact, kind="stable")[:k]
    if fetch < n and exact[order[-1]] <= scores.min() + FP16_TOLERANCE:
        return _exact(vectors, q, k, None if allowed is None else np.flatnonzero(allowed))
    return exact[order], rows[order]


def _params(index: faiss.Index, selector) -> faiss.SearchParameters:
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    return faiss.SearchParameters(sel=selector)


def _exact(vectors: np.ndarray, query: np.ndarray, k: int, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by a float32 scan of ``rows`` (all rows when None)."""
    scores = vectors @ query if rows is None else vectors[rows] @ query
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return scores[top], (top if rows is None else rows[top])


def to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def from_bytes(payload: bytes | memoryview) -> faiss.Index:
    """Inverse of :func:`to_bytes`; the search parameters (nprobe, efSearch) travel inside the serialised index."""
    return faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
