"""``moodwire bench retrieval``: the FAISS index kinds the worker chooses between, at scale.

For each size N and each kind (``flat``: exact; ``ivf`` and ``hnsw``: approximate,
with the parameters :mod:`retrieval.index` chooses for N) one run measures:

* ``recall_at_10``: the share of the true 10 nearest neighbours (brute force,
  ``faiss.knn``) that the index returns, averaged over held-out queries;
* ``build_s``: seconds to build the index of N vectors (IVF: training included);
* ``index_bytes``: the serialised index, which is its memory for these kinds;
* batch latency: milliseconds per search call of 64 queries (the worker searches
  a scored batch at once) and per query;
* single-query latency p50/p99 (an alert's evidence searches one vector);
* a sweep of the approximate kinds' search knob (IVF ``nprobe``, HNSW
  ``efSearch``): recall and latency per setting, from which the rule is chosen.

Vectors are 384-d, L2-normalised, searched by inner product, as the real index
holds them. When the shared data set is present (``../shared/data`` beside the
checkout) its texts are embedded by :class:`~retrieval.embedder.FrozenEmbedder`
(nothing is cached); otherwise anchors are drawn from a generated clustered
distribution. Either way the anchors are grown to N by :func:`grow`. Queries are
real (or generated) anchors held out before growing: neither they nor any
vector grown from them is indexed.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

DIM = 384
K = 10
BATCH = 64
KINDS = ("flat", "ivf", "hnsw")
# Search knobs swept after each approximate build (values above nlist are skipped).
SWEEP = {"ivf": (4, 8, 16, 32, 64, 128, 256), "hnsw": (16, 32, 64, 128, 256)}
TARGET_RECALL = 0.95


def shared_data_dir() -> Path | None:
    """``shared/data`` in the checkout or beside it, where present."""
    root = Path(__file__).resolve().parents[2]
    for candidate in (root / "shared" / "data", root.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def parse_sizes(text: str) -> list[int]:
    """``"100k,1M,2500"`` -> ``[100000, 1000000, 2500]``.

    >>> parse_sizes("100k,1M,2500")
    [100000, 1000000, 2500]
    """
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        number = part[:-1] if scale != 1 else part
        try:
            value = int(float(number) * scale)
        except ValueError:
            raise ValueError(f"not a size: {part!r} (give e.g. 100k,1M)") from None
        if value < K + 1:
            raise ValueError(f"size {value} is too small: at least {K + 1}")
        sizes.append(value)
    return sizes


def recall_at_k(true_ids: np.ndarray, found_ids: np.ndarray) -> float:
    """Mean share of each row of ``true_ids`` found in the same row of ``found_ids``.

    >>> recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 9], [3, 4]]))
    0.75
    """
    k = true_ids.shape[1]
    hits = [
        len(set(t.tolist()) & set(f.tolist()) - {-1})
        for t, f in zip(true_ids, found_ids, strict=True)
    ]
    return float(np.sum(hits) / (k * len(true_ids)))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- vectors ----------------------------------------------------------------------------


def real_texts(data_dir: Path) -> list[str]:
    """Every distinct text of the labelled files under ``data_dir``."""
    from learner.data import read_records

    texts: dict[str, None] = {}
    for path in sorted(data_dir.rglob("*.csv")) + sorted(data_dir.rglob("*.jsonl")):
        rows = read_records(path)
        key = next(
            (k for k in rows[0] if k.lower() in ("text", "sentence", "headline", "tweet")), None
        )
        if key is None:
            continue
        texts.update((str(r[key]).strip(), None) for r in rows if str(r[key]).strip())
    return list(texts)


def generated_anchors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Clustered unit vectors: 64 topics of 16 subtopics, around a shared direction.

    Sentence embeddings are anisotropic (they share a mean direction) and cluster
    by topic within topic; uniform noise would be the approximate kinds' worst case.
    """
    common = _unit(rng.standard_normal((1, dim)))
    topics = _unit(common + 1.0 * _unit(rng.standard_normal((64, dim))))
    subtopics = _unit(topics.repeat(16, axis=0) + 0.6 * _unit(rng.standard_normal((64 * 16, dim))))
    pick = rng.integers(0, len(subtopics), n)
    return _unit(subtopics[pick] + 0.5 * _unit(rng.standard_normal((n, dim))))


def grow(
    anchors: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    neighbours: int = 10,
    noise: float = 0.25,
    chunk: int = 100_000,
) -> np.ndarray:
    """``n`` unit vectors: the anchors themselves, then mixtures of an anchor and a near one.

    Each grown vector is ``a + t (b - a) + e``, renormalised, where ``a`` is a random
    anchor, ``b`` one of its ``neighbours`` nearest anchors, ``t`` uniform in [0, 0.5]
    and ``e`` isotropic noise of norm ``noise`` times the median distance from an
    anchor to its nearest one. The grown set keeps the anchors' cluster structure
    (new texts on known topics, paraphrases, near-duplicates) instead of the
    uniform noise around each anchor that plain noisy copies would give.
    """
    import faiss

    anchors = np.ascontiguousarray(anchors, dtype=np.float32)
    m, dim = anchors.shape
    if n <= m:
        return anchors[rng.permutation(m)[:n]].copy()
    sims, near = faiss.knn(anchors, anchors, min(m, neighbours + 1), faiss.METRIC_INNER_PRODUCT)
    near, sims = near[:, 1:], sims[:, 1:]  # drop each anchor itself
    scale = noise * float(np.median(np.sqrt(np.maximum(0.0, 2 - 2 * sims[:, 0]))))
    out = np.empty((n, dim), dtype=np.float32)
    out[:m] = anchors
    for start in range(m, n, chunk):
        size = min(chunk, n - start)
        a = rng.integers(0, m, size)
        b = near[a, rng.integers(0, near.shape[1], size)]
        t = rng.uniform(0.0, 0.5, (size, 1)).astype(np.float32)
        e = _unit(rng.standard_normal((size, dim), dtype=np.float32)) * scale
        out[start : start + size] = _unit(anchors[a] + t * (anchors[b] - anchors[a]) + e)
    return out


def vectors(
    sizes: Sequence[int],
    queries: int,
    *,
    data_dir: Path | None,
    device: str,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(base, queries, source)``: ``max(sizes)`` indexed vectors (a prefix is each size)
    and held-out queries, with a description of where they came from."""
    rng = np.random.default_rng(seed)
    if data_dir is not None:
        from learner.classifier import select_device
        from retrieval.embedder import FrozenEmbedder

        texts = real_texts(data_dir)
        log.info("bench_retrieval_embedding", texts=len(texts), data=str(data_dir))
        t0 = time.perf_counter()
        embedder = FrozenEmbedder(device=select_device(device))
        anchors = embedder.embed(texts)
        source: dict[str, Any] = {
            "kind": "real",
            "data": str(data_dir),
            "texts": len(texts),
            "embedder": embedder.space_id,
            "embed_s": round(time.perf_counter() - t0, 1),
        }
    else:
        anchors = generated_anchors(20_000, DIM, rng)
        source = {"kind": "generated", "anchors": len(anchors)}
    anchors = anchors[rng.permutation(len(anchors))]
    held = min(queries, len(anchors) // 10)
    query_vectors, anchors = anchors[:held], anchors[held:]
    base = grow(anchors, max(sizes), rng)
    # Each size is a prefix: shuffled (in place) so that a small size is not all anchors.
    rng.shuffle(base)
    source.update(
        queries=held,
        held_out="queries are anchors removed before growing; none is indexed",
        grown=(
            "anchors, then a + t(b - a) + e renormalised: a a random anchor, b one of its 10 "
            "nearest anchors, t ~ U[0, 0.5], e isotropic noise of norm 0.25 x the median "
            "anchor-to-nearest-anchor distance"
        ),
    )
    return base, query_vectors, source


# -- measuring --------------------------------------------------------------------------


def _index_bytes(index: Any) -> int:
    import faiss

    with tempfile.TemporaryDirectory(prefix="moodwire-bench-retrieval-") as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def _batched(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    found, times = [], []
    for start in range(0, len(queries), BATCH):
        t0 = time.perf_counter()
        found.append(search(queries[start : start + BATCH]))
        times.append(time.perf_counter() - t0)
    return np.concatenate(found), times


def _knob(index: Any, kind: str) -> Any:
    import faiss

    if kind == "ivf":
        return faiss.extract_index_ivf(index)
    return faiss.downcast_index(index.index).hnsw


def _set_knob(index: Any, kind: str, value: int) -> None:
    knob = _knob(index, kind)
    if kind == "ivf":
        knob.nprobe = value
    else:
        knob.efSearch = value


def measure(
    kind: str,
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    *,
    single_queries: int,
    sweep: bool = True,
) -> dict[str, Any]:
    """One kind at one size: build, memory, recall and latencies (see the module doc)."""
    from retrieval.index import VectorIndex, approximate_params

    n = len(base)
    t0 = time.perf_counter()
    idx = VectorIndex.from_vectors(np.arange(n), base, kind=kind, use_gpu=False)
    build_s = time.perf_counter() - t0
    raw = idx._index  # the faiss index itself: the bench reads and turns its knobs

    def search(q: np.ndarray) -> np.ndarray:
        return idx.search(q, K)[1]

    search(queries[:BATCH])  # warm-up
    found, batch_times = _batched(search, queries)
    # Only calls of a full 64 queries (a last, short call would flatter the median).
    full = batch_times[: len(queries) // BATCH] or batch_times
    singles = []
    for q in queries[:single_queries]:
        t1 = time.perf_counter()
        search(q[None, :])
        singles.append(time.perf_counter() - t1)
    result: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "params": approximate_params(kind, n) if kind != "flat" else {},
        "build_s": round(build_s, 2),
        "index_bytes": _index_bytes(raw),
        "recall_at_10": round(recall_at_k(truth, found), 4),
        "batch": {
            "queries_per_call": BATCH,
            "calls": len(full),
            "ms_per_call_p50": round(1000 * float(np.median(full)), 3),
            "ms_per_query": round(1000 * float(np.median(full)) / BATCH, 4),
        },
        "single": {
            "count": len(singles),
            "p50_ms": round(1000 * float(np.percentile(singles, 50)), 3),
            "p99_ms": round(1000 * float(np.percentile(singles, 99)), 3),
        },
    }
    if sweep and kind in SWEEP:
        default = result["params"]["nprobe" if kind == "ivf" else "ef_search"]
        limit = result["params"].get("nlist", math.inf)
        rows = []
        for value in SWEEP[kind]:
            if value > limit:
                continue
            _set_knob(raw, kind, value)
            got, times = _batched(search, queries)
            rows.append(
                {
                    "nprobe" if kind == "ivf" else "ef_search": value,
                    "recall_at_10": round(recall_at_k(truth, got), 4),
                    "ms_per_query": round(1000 * float(np.median(times)) / BATCH, 4),
                }
            )
        _set_knob(raw, kind, default)
        result["sweep"] = rows
    return result


def retrieval_bench(
    *,
    sizes: Sequence[int],
    kinds: Sequence[str] = KINDS,
    queries: int = 1000,
    single_queries: int = 200,
    data_dir: Path | None,
    device: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every kind at every size; the JSON result (and a PNG beside ``out``)."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    sizes = sorted(set(sizes))
    base, query_vectors, source = vectors(
        sizes, queries, data_dir=data_dir, device=device, seed=seed
    )
    results = []
    for n in sizes:
        view = base[:n]
        t0 = time.perf_counter()
        _, truth = faiss.knn(query_vectors, view, K, faiss.METRIC_INNER_PRODUCT)
        log.info("bench_retrieval_truth", n=n, s=round(time.perf_counter() - t0, 1))
        for kind in kinds:
            if progress:
                print(f"bench retrieval: {kind} at {n:,} ...", file=sys.stderr, flush=True)
            row = measure(kind, view, query_vectors, truth, single_queries=single_queries)
            log.info(
                "bench_retrieval_measured",
                kind=kind,
                n=n,
                build_s=row["build_s"],
                recall=row["recall_at_10"],
                single_p50_ms=row["single"]["p50_ms"],
                batch_ms_per_query=row["batch"]["ms_per_query"],
                sweep=row.get("sweep"),
            )
            results.append(row)
    result: dict[str, Any] = {
        "bench": "retrieval",
        "dim": DIM,
        "k": K,
        "metric": "inner product on L2-normalised vectors",
        "sizes": sizes,
        "kinds": list(kinds),
        "source": source,
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "target_recall_at_10": TARGET_RECALL,
        "results": results,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result["plot"] = str(plot(results, out.with_suffix(".png")))
    return result


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """Recall@10, single-query p50 and per-query batch latency against size, per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=110)
    colors = {"flat": "#7f7f7f", "ivf": "#1f77b4", "hnsw": "#2ca02c"}
    panels = [
        ("recall@10 vs exact", lambda r: r["recall_at_10"], False),
        ("single-query latency p50 (ms)", lambda r: r["single"]["p50_ms"], True),
        ("batch of 64: ms per query", lambda r: r["batch"]["ms_per_query"], True),
    ]
    for ax, (title, value, log_y) in zip(axes, panels, strict=True):
        for kind in dict.fromkeys(r["kind"] for r in results):
            rows = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["n"])
            ax.plot(
                [r["n"] for r in rows],
                [value(r) for r in rows],
                marker="o",
                label=kind,
                color=colors.get(kind),
            )
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("items indexed")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].axhline(TARGET_RECALL, color="red", ls="--", lw=1, label=f"target {TARGET_RECALL}")
    axes[0].legend(loc="lower left")
    fig.suptitle("moodwire bench retrieval: 384-d normalised vectors, inner product, k=10")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
