"""``macro eval memory``: how fast the image memory answers, and how much the approximate indexes lose.

1. Flat memory at 10k and 100k entries, end to end through :class:`ImageMemory` (metadata, file, reload): time to
   write the memory, to load it in a fresh handle, to add one entry (a full rewrite), and query latency p50/p95
   for k=5 unfiltered and filtered on ``{"family": "segment", "verification": "verified"}`` (1/6 of the entries).
2. IVF and HNSW at 1M entries on the index layer the memory uses (:mod:`macro.memory.index`, without the metadata
   file, which would add a 1.3 GB write): build time, resident memory, and per setting of nprobe / efSearch the
   single-query latency p50/p95 and recall@5 against exact search (FAISS flat, batched) on held-out queries.

Vectors are synthetic, EMBED_DIM-dimensional, L2-normalised Gaussians whose i-th coordinate has variance 1/i,
the power-law shape of PCA spectra of CNN image features; queries are fresh draws. (A mixture of well-separated
clusters was tried first and is too easy: IVF lists line up with the clusters and every setting reaches recall
1.0.) Without near-duplicates the top-5 cosines are only about 0.5, which makes this a conservative recall figure
for real memories, where similar cases sit much closer. Latencies are wall-clock, one OpenMP thread per query.
"""

from __future__ import annotations

import functools
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from macro.memory import index as faiss_index
from macro.memory.store import ImageMemory

FAMILIES = ("segment", "classify", "vqa", "describe")
IVF_NPROBES = (16, 32, 64, 128)
HNSW_EF_SEARCH = (64, 128, 256, 512)
FILTER = {"family": "segment", "verification": "verified"}
SYNTHETIC = "synthetic-power-law"  # the encoder id the benchmark's vectors are stored under


def run(
    sizes=(10_000, 100_000),
    large: int = 1_000_000,
    queries: int = 200,
    dim: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    from macro.memory.encoder import EMBED_DIM

    dim = dim or EMBED_DIM
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    report = {"dim": dim, "queries": queries, "data": "unit Gaussians, coordinate variance 1/i", "flat": []}
    with tempfile.TemporaryDirectory(prefix="macro-memory-bench-") as tmp:
        for n in sizes:
            log(f"flat memory with {n:,} entries")
            report["flat"].append(_flat(Path(tmp) / f"flat-{n}", _draw(rng, scale, n), _draw(rng, scale, queries)))
    if large:
        report["large"] = _large(_draw(rng, scale, large), _draw(rng, scale, queries), log)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


def _draw(rng: np.random.Generator, scale: np.ndarray, n: int) -> np.ndarray:
    x = rng.standard_normal((n, len(scale)), dtype=np.float32)
    x *= scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _flat(folder: Path, vectors: np.ndarray, queries: np.ndarray) -> dict:
    metas = [
        {
            "case_id": f"case-{i}",
            "family": FAMILIES[i % len(FAMILIES)],
            "verification": "verified" if i % 3 else "failed",
            "tools": ["describe_scan", "segment_tumour"],
            "answer": "synthetic",
        }
        for i in range(len(vectors))
    ]
    start = time.perf_counter()
    ImageMemory(folder, kind="flat", encoder=SYNTHETIC).add_many(vectors, metas)
    write_s = time.perf_counter() - start
    memory = ImageMemory(folder, encoder=SYNTHETIC)
    start = time.perf_counter()
    entries = len(memory)
    load_s = time.perf_counter() - start
    plain = _latencies(lambda q: memory.query(q, k=5), queries)
    filtered = _latencies(lambda q: memory.query(q, k=5, where=FILTER), queries)
    start = time.perf_counter()
    memory.add(queries[0], metas[0])
    add_one_s = time.perf_counter() - start
    return {
        "entries": entries,
        "write_s": round(write_s, 2),
        "load_s": round(load_s, 3),
        "add_one_s": round(add_one_s, 3),
        "file_mb": round(memory.file.stat().st_size / 2**20, 1),
        "query_ms": plain,
        "filtered_query_ms": filtered,
    }


def _latencies(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> dict:
    fn(queries[0])  # warm-up: first filtered query builds the metadata bitmaps
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(float(np.percentile(times, 50)), 3), "p95": round(float(np.percentile(times, 95)), 3)}


def _large(vectors: np.ndarray, queries: np.ndarray, log: Callable[[str], None]) -> dict:
    n = len(vectors)
    log(f"exact ground truth for {len(queries)} queries over {n:,} vectors")
    start = time.perf_counter()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, 5)  # float32, batched over all threads
    del exact
    out = {"entries": n, "vectors_mb": round(vectors.nbytes / 2**20), "truth_s": round(time.perf_counter() - start, 1)}
    flat = faiss_index.build("flat", vectors)
    out["flat_query_ms"] = _latencies(functools.partial(faiss_index.search, flat, vectors, k=5), queries[:50])
    del flat
    for kind, knob, values in (("ivf", "nprobe", IVF_NPROBES), ("hnsw", "efSearch", HNSW_EF_SEARCH)):
        log(f"{kind} index over {n:,} vectors")
        rss = _rss_mb()
        start = time.perf_counter()
        index = faiss_index.build(kind, vectors)
        entry = {"build_s": round(time.perf_counter() - start, 1), "index_mb": round(_rss_mb() - rss), "sweep": []}
        params = index if kind == "ivf" else index.hnsw
        default = getattr(params, knob)
        for value in sorted({*values, default}):
            setattr(params, knob, value)
            found = [faiss_index.search(index, vectors, q, 5)[1] for q in queries]
            recall = float(np.mean([len(set(f) & set(t)) / 5 for f, t in zip(found, truth)]))
            entry["sweep"].append(
                {
                    knob: value,
                    "default": value == default,
                    "recall_at_5": round(recall, 4),
                    "query_ms": _latencies(functools.partial(faiss_index.search, index, vectors, k=5), queries),
                }
            )
        if kind == "ivf":
            entry["lists"] = index.nlist
        else:
            entry["M"] = faiss_index.HNSW_M
            entry["efConstruction"] = index.hnsw.efConstruction
        out[kind] = entry
        del index, params
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def markdown(report: dict) -> str:
    lines = [
        f"Image memory benchmark ({report['dim']}-d vectors: {report['data']}; {report['queries']} queries, k=5)",
        "",
        "| flat entries | write s | load s | add one s | file MB | query p50 / p95 ms | filtered p50 / p95 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["flat"]:
        q, f = row["query_ms"], row["filtered_query_ms"]
        lines.append(
            f"| {row['entries']:,} | {row['write_s']} | {row['load_s']} | {row['add_one_s']} | {row['file_mb']} | "
            f"{q['p50']} / {q['p95']} | {f['p50']} / {f['p95']} |"
        )
    large = report.get("large")
    if large:
        fq = large["flat_query_ms"]
        lines += [
            "",
            f"{large['entries']:,} vectors ({large['vectors_mb']} MB): exact flat query p50 {fq['p50']} ms, p95 "
            f"{fq['p95']} ms",
            "",
            "| index | build s | index MB | setting | recall@5 | query p50 / p95 ms |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for kind, knob in (("ivf", "nprobe"), ("hnsw", "efSearch")):
            entry = large[kind]
            shape = f"{entry['lists']} lists" if kind == "ivf" else f"M={entry['M']}, efC={entry['efConstruction']}"
            for row in entry["sweep"]:
                mark = " (default)" if row["default"] else ""
                lines.append(
                    f"| {kind} ({shape}) | {entry['build_s']} | {entry['index_mb']} | {knob}={row[knob]}{mark} | "
                    f"{row['recall_at_5']:.3f} | {row['query_ms']['p50']} / {row['query_ms']['p95']} |"
                )
    lines += ["", f"peak resident memory {report['peak_rss_mb']} MB"]
    return "\n".join(lines)
