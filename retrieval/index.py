"""The FAISS index of past items, keyed by the store's sequence number.

Exact inner-product search (cosine on normalised vectors) while the index is
small; past ``exact_max`` vectors it is rebuilt once as an IVF index (or, when
chosen, HNSW), which keeps search fast at millions of items with recall@10 near
0.98 (the rule and its measurements: ``EXACT_MAX`` below). On a
machine with a CUDA GPU and faiss built with GPU support the index lives on
the GPU. Persisted with ``faiss.write_index`` beside a small JSON of metadata,
and always rebuildable from the store, which keeps every embedding.

>>> import numpy as np
>>> idx = VectorIndex(dim=4, exact_max=1000)
>>> v = np.eye(4, dtype=np.float32)
>>> idx.add(np.arange(4), v)
>>> sims, ids = idx.search(v[:1], k=2)
>>> int(ids[0, 0]), round(float(sims[0, 0]), 3)
(0, 1.0)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import structlog

try:
    import faiss
except ModuleNotFoundError as exc:  # neither FAISS build is installed
    if exc.name != "faiss":
        raise
    raise ModuleNotFoundError(
        "faiss is not installed: install Moodwire with one of its FAISS extras, "
        "`pip install 'moodwire[cpu]'` (any machine) or `pip install 'moodwire[gpu]'` "
        "(a CUDA 12 host), never both: they provide the same `faiss` module",
        name="faiss",
    ) from exc

log = structlog.get_logger(__name__)


APPROXIMATE_KINDS = ("ivf", "hnsw")

# The rule, from `moodwire bench retrieval --sizes 100k,1M` (384-d frozen embeddings of the
# shared data's 16,771 texts grown to N, 1,000 held-out queries, k=10; 2 cores, faiss
# 1.15.1, one run on a loaded machine, so read the ratios, not the milliseconds):
#
#   N     kind            recall@10  64-query call  single p50  build
#   100k  flat            1.0         752 ms         64 ms       0.3 s
#   100k  ivf nprobe 64   0.964        70 ms (sweep)  -          25 s   (nlist 1264)
#   1M    flat            1.0        7175 ms        264 ms       5 s
#   1M    ivf nprobe 64   0.979       211 ms (sweep)  -         291 s   (nlist 4000)
#   1M    ivf nprobe 250  0.994       774 ms         10 ms     (the old nlist/16 rule)
#   1M    hnsw ef 64/256  0.73/0.89    60/119 ms     0.2 ms    342 s   (M 32, efC 40)
#
# * Exact search costs linearly in N: a 64-item batch took 0.75 s at 100k, as long as the
#   model takes to score it. EXACT_MAX keeps it near 0.35 s (about 30 ms a single query).
# * IVF recall@10 depends on nprobe far more than on nlist: 32 lists give 0.940 at 100k
#   and 0.960 at 1M, 64 give 0.964 and 0.979. nprobe 64 meets the 0.95 target at both
#   sizes with margin, at a third of the old nlist/16 rule's cost at 1M (which scanned a
#   sixteenth of the index at any size). nlist stays 4 sqrt(N), trained on 64 per list.
# * HNSW (M 32, efConstruction 40) builds no faster than IVF and misses the target at 1M
#   even at efSearch 256, so IVF is the default; HNSW stays selectable (``approximate=``)
#   for its 0.2 ms single queries where recall near 0.97 at 100k (efSearch 128) suffices.
EXACT_MAX = 50_000
IVF_NPROBE = 64


def ivf_params(n: int) -> dict[str, int]:
    """``nlist`` and ``nprobe`` of an IVF index trained on ``n`` vectors (see the rule above).

    >>> ivf_params(1_000_000)
    {'nlist': 4000, 'nprobe': 64}
    """
    nlist = int(min(65536, max(64, 4 * math.sqrt(n))))
    return {"nlist": nlist, "nprobe": min(nlist, IVF_NPROBE)}


def hnsw_params(n: int) -> dict[str, int]:
    """Graph degree ``M``, ``ef_construction`` and ``ef_search`` of an HNSW index."""
    return {"M": 32, "ef_construction": 40, "ef_search": 128}


def approximate_params(kind: str, n: int) -> dict[str, int]:
    return ivf_params(n) if kind == "ivf" else hnsw_params(n)


def build_approximate(kind: str, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """A CPU index of ``kind`` holding ``vectors`` under ``ids``, by the rules above."""
    n, dim = vectors.shape
    if kind == "ivf":
        p = ivf_params(n)
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, p["nlist"], faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        ivf.train(vectors[rng.choice(n, min(n, p["nlist"] * 64), replace=False)])
        ivf.nprobe = p["nprobe"]
        ivf.add_with_ids(vectors, ids)
        return ivf
    if kind == "hnsw":
        p = hnsw_params(n)
        hnsw = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = p["ef_construction"]
        hnsw.hnsw.efSearch = p["ef_search"]
        index = faiss.IndexIDMap2(hnsw)
        index.add_with_ids(vectors, ids)
        return index
    raise ValueError(f"kind must be one of {APPROXIMATE_KINDS}, not {kind!r}")


def gpu_available() -> bool:
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - a broken GPU build is "no GPU", not a crash
        return False


class IndexSpaceMismatch(RuntimeError):
    """A persisted index was built in a different embedding space."""


class VectorIndex:
    """Search past items by meaning."""

    def __init__(
        self,
        dim: int,
        *,
        exact_max: int = EXACT_MAX,
        approximate: str = "ivf",
        use_gpu: bool | None = None,
        space_id: str = "",
    ) -> None:
        if approximate not in APPROXIMATE_KINDS:
            raise ValueError(f"approximate must be one of {APPROXIMATE_KINDS}, not {approximate!r}")
        self.dim = dim
        self.exact_max = exact_max
        self.approximate = approximate
        self.space_id = space_id
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu_res = faiss.StandardGpuResources() if self.use_gpu else None
        self.kind = "flat"
        self._index = self._place(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        self.max_id = -1

    def _place(self, index: faiss.Index) -> faiss.Index:
        if self._gpu_res is None:
            return index
        try:
            return faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        except Exception as exc:  # noqa: BLE001 - some index types have no GPU version
            log.warning("faiss_gpu_unavailable_for_index", kind=self.kind, error=str(exc))
            return index

    def _cpu(self) -> faiss.Index:
        if self._gpu_res is None:
            return self._index
        try:
            return faiss.index_gpu_to_cpu(self._index)
        except Exception:  # noqa: BLE001 - already a CPU index
            return self._index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}"
            )
        ids = np.asarray(ids, dtype=np.int64)
        self._index.add_with_ids(vectors, ids)
        self.max_id = max(self.max_id, int(ids.max()))
        if self.kind == "flat" and len(self) > self.exact_max:
            self._to_approximate()

    def _to_approximate(self) -> None:
        cpu = self._cpu()
        n = cpu.ntotal
        ids = faiss.vector_to_array(cpu.id_map).astype(np.int64)
        vectors = cpu.index.reconstruct_n(0, n)
        del cpu
        self._index = self._place(build_approximate(self.approximate, vectors, ids))
        self.kind = self.approximate
        log.info(
            "index_rebuilt_approximate", n=n, kind=self.kind, **approximate_params(self.kind, n)
        )

    @classmethod
    def from_vectors(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        kind: str,
        space_id: str = "",
        use_gpu: bool | None = None,
    ) -> VectorIndex:
        """An index of ``kind`` ("flat", "ivf", "hnsw") built at once, as :meth:`add` would
        build it past ``exact_max`` (``moodwire bench retrieval`` measures these)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        approximate = kind if kind in APPROXIMATE_KINDS else "ivf"
        idx = cls(
            vectors.shape[1],
            exact_max=len(ids) if kind == "flat" else 0,
            approximate=approximate,
            use_gpu=use_gpu,
            space_id=space_id,
        )
        if kind == "flat":
            idx.add(ids, vectors)
            return idx
        if kind not in APPROXIMATE_KINDS:
            raise ValueError(f"kind must be flat or one of {APPROXIMATE_KINDS}, not {kind!r}")
        idx._index = idx._place(build_approximate(kind, vectors, ids))
        idx.kind = kind
        idx.max_id = int(ids.max()) if len(ids) else -1
        return idx

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, ids)``, each ``(len(queries), k)``; missing hits have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(self) == 0 or k == 0:
            return (
                np.zeros((len(queries), k), np.float32),
                np.full((len(queries), k), -1, np.int64),
            )
        return self._index.search(queries, k)

    def save(self, directory: Path) -> None:
        """Write ``index.faiss`` and ``index.json`` (with the index file's sha256).

        Both are written under per-process temporary names and renamed into
        place, the index first; a half-written pair is caught by :meth:`load`
        (checksum and count) and rebuilt. On a failure (a full disk) the
        temporary files are removed and the error raised.
        """
        directory.mkdir(parents=True, exist_ok=True)
        # Per-process temporary names: workers sharing a directory never clobber a half file.
        tmp = directory / f"index.faiss.{os.getpid()}.tmp"
        tmp_meta = directory / f"index.json.{os.getpid()}.tmp"
        try:
            faiss.write_index(self._cpu(), str(tmp))
            meta = {
                "dim": self.dim,
                "kind": self.kind,
                "space_id": self.space_id,
                "max_id": self.max_id,
                "ntotal": len(self),
                "sha256": _sha256(tmp),
            }
            tmp_meta.write_text(json.dumps(meta))
            tmp.replace(directory / "index.faiss")
            tmp_meta.replace(directory / "index.json")
        except BaseException:
            for leftover in (tmp, tmp_meta):
                leftover.unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        space_id: str,
        exact_max: int = EXACT_MAX,
        approximate: str = "ivf",
        use_gpu: bool | None = None,
    ) -> VectorIndex | None:
        """The persisted index, or None when there is none (or it is unreadable)."""
        meta_path, index_path = directory / "index.json", directory / "index.faiss"
        if not (meta_path.is_file() and index_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("dim"), int):
                raise ValueError("not an index description")
        except (OSError, ValueError) as exc:
            log.warning("index_meta_unreadable_rebuilding", path=str(meta_path), error=str(exc))
            return None
        if meta.get("space_id") != space_id:
            raise IndexSpaceMismatch(
                f"index in {directory} was built in space {meta.get('space_id')!r}, "
                f"not {space_id!r}; delete it to rebuild from the store"
            )
        if meta.get("sha256") != _sha256(index_path):
            # Changed, half written, or from an older release: the store rebuilds it.
            log.warning("index_checksum_mismatch_rebuilding", path=str(index_path))
            return None
        try:
            raw = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            log.warning("index_unreadable_rebuilding", path=str(index_path), error=str(exc))
            return None
        if raw.ntotal != meta.get("ntotal") or raw.d != meta["dim"]:
            log.warning("index_count_mismatch_rebuilding", path=str(index_path))
            return None
        # A snapshot keeps the kind it was built as; ``approximate`` applies to a flat one.
        idx = cls(
            int(meta["dim"]),
            exact_max=exact_max,
            approximate=approximate,
            use_gpu=use_gpu,
            space_id=space_id,
        )
        idx.kind = meta.get("kind", "flat")
        idx.max_id = int(meta.get("max_id", -1))
        idx._index = idx._place(raw)
        return idx


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
