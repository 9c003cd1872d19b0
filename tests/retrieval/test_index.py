from __future__ import annotations

import numpy as np
import pytest

from retrieval.index import IndexSpaceMismatch, VectorIndex


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_finds_itself_first() -> None:
    idx = VectorIndex(16, exact_max=10_000)
    vecs = _unit(500, 16, 0)
    idx.add(np.arange(100, 600), vecs)
    sims, ids = idx.search(vecs[:10], 3)
    assert list(ids[:, 0]) == list(range(100, 110))
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    # Sentence embeddings cluster by topic; uniform noise would be IVF's worst case.
    rng = np.random.default_rng(seed)
    centres = _unit(50, dim, seed + 100)
    x = centres[rng.integers(0, 50, n)] + 0.35 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_switches_to_ivf_past_threshold_with_high_recall() -> None:
    idx = VectorIndex(32, exact_max=2000)
    vecs = _clustered(5000, 32, 1)
    idx.add(np.arange(2000), vecs[:2000])
    assert idx.kind == "flat"
    idx.add(np.arange(2000, 5000), vecs[2000:])
    assert idx.kind == "ivf" and len(idx) == 5000
    queries = _clustered(100, 32, 2)
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    _, got = idx.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got, strict=True)])
    assert recall >= 0.9


def test_save_load_and_space_check(tmp_path) -> None:
    idx = VectorIndex(8, space_id="space-a")
    idx.add(np.arange(3), _unit(3, 8, 3))
    idx.save(tmp_path)
    back = VectorIndex.load(tmp_path, space_id="space-a")
    assert back is not None and len(back) == 3 and back.max_id == 2
    with pytest.raises(IndexSpaceMismatch):
        VectorIndex.load(tmp_path, space_id="space-b")
    assert VectorIndex.load(tmp_path / "none", space_id="space-a") is None


def test_empty_index_returns_no_hits() -> None:
    sims, ids = VectorIndex(4).search(np.zeros((2, 4), np.float32), 3)
    assert ids.shape == (2, 3) and (ids == -1).all()


def test_switches_to_hnsw_when_chosen_and_survives_save_load(tmp_path) -> None:
    idx = VectorIndex(32, exact_max=2000, approximate="hnsw", space_id="s")
    vecs = _clustered(3000, 32, 4)
    idx.add(np.arange(10, 2010), vecs[:2000])
    assert idx.kind == "flat"
    idx.add(np.arange(2010, 3010), vecs[2000:])
    assert idx.kind == "hnsw" and len(idx) == 3000 and idx.max_id == 3009
    queries = _clustered(50, 32, 5)
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :10] + 10
    _, got = idx.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got, strict=True)])
    assert recall >= 0.85  # tight clusters of near ties in 32-d; random would be ~0.003
    # Added after the switch: HNSW grows in place, ids kept.
    extra = _clustered(5, 32, 6)
    idx.add(np.arange(5000, 5005), extra)
    assert list(idx.search(extra, 1)[1][:, 0]) == list(range(5000, 5005))
    idx.save(tmp_path)
    back = VectorIndex.load(tmp_path, space_id="s")
    assert back is not None and back.kind == "hnsw" and len(back) == 3005
    np.testing.assert_array_equal(back.search(queries, 10)[1], idx.search(queries, 10)[1])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_from_vectors_builds_each_kind(kind: str) -> None:
    vecs = _clustered(3000, 16, 7)
    idx = VectorIndex.from_vectors(np.arange(3000) * 2, vecs, kind=kind)
    assert idx.kind == kind and len(idx) == 3000 and idx.max_id == 5998
    assert (idx.search(vecs[:20], 1)[1][:, 0] == np.arange(20) * 2).mean() >= 0.9


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="approximate"):
        VectorIndex(4, approximate="annoy")
    with pytest.raises(ValueError, match="kind"):
        VectorIndex.from_vectors(np.arange(2), _unit(2, 4, 0), kind="annoy")


def test_the_measured_rule() -> None:
    from moodwire.settings import Settings
    from retrieval.index import EXACT_MAX, IVF_NPROBE, ivf_params

    assert ivf_params(1_000_000) == {"nlist": 4000, "nprobe": IVF_NPROBE}
    assert ivf_params(100) == {"nlist": 64, "nprobe": 64}  # never more lists than there are
    assert ivf_params(10**12)["nlist"] == 65536
    assert Settings().exact_index_max == EXACT_MAX == VectorIndex(4).exact_max
