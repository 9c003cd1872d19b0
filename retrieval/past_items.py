"""Past items by meaning: the FAISS index kept in step with the store.

The store is the source of truth (it keeps every item's frozen embedding);
the index catches up from it by sequence number, so items scored by any
worker become neighbours for every worker, and a lost or stale snapshot is
rebuilt rather than trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import structlog

from retrieval.index import EXACT_MAX, VectorIndex
from retrieval.neighbors import Neighbor
from state.store import Store, decode_embeddings

log = structlog.get_logger(__name__)


class PastItems:
    """Nearest past items for new ones, by cosine similarity in the frozen space."""

    def __init__(
        self,
        store: Store,
        *,
        dim: int,
        space_id: str,
        snapshot_dir: Path | None = None,
        exact_max: int = EXACT_MAX,
        approximate: str = "ivf",
        snapshot_every: int = 5000,
    ) -> None:
        self.store = store
        self.dim = dim
        self.space_id = space_id
        self.snapshot_dir = snapshot_dir
        self.snapshot_every = snapshot_every
        self._since_snapshot = 0
        self._meta: dict[int, tuple[str, str]] = {}  # seq -> (item id, label)
        loaded = (
            VectorIndex.load(
                snapshot_dir, space_id=space_id, exact_max=exact_max, approximate=approximate
            )
            if snapshot_dir is not None
            else None
        )
        self.index = loaded or VectorIndex(
            dim, exact_max=exact_max, approximate=approximate, space_id=space_id
        )
        if loaded is not None:
            # Ids and labels are cheap to re-read; only the vectors come from the snapshot.
            self._reload_meta(upto=loaded.max_id)
        self.last_seq = self.index.max_id
        self.catch_up()
        log.info(
            "past_items_ready",
            n=len(self.index),
            kind=self.index.kind,
            from_snapshot=loaded is not None,
        )

    def __len__(self) -> int:
        return len(self.index)

    def _reload_meta(self, upto: int) -> None:
        seq = -1
        while True:
            rows = list(self.store.embeddings_after(seq, limit=20_000, with_embedding=False))
            if not rows:
                return
            for s, item_id, label, _ in rows:
                if s > upto:
                    return
                self._meta[s] = (item_id, label)
            seq = rows[-1][0]

    def catch_up(self, written: Sequence[tuple[int, str, str, bytes]] = ()) -> int:
        """Add items the store holds that the index does not; returns how many.

        ``written``: ``(seq, id, label, embedding)`` of rows the caller has just
        stored itself. They are added as given, not read back; only other writers'
        rows come from the store (the same bytes, so the index is the one a
        rebuild from the store would make).
        """
        own = {int(r[0]) for r in written}
        # Every page is read before anything is added: a store that fails half-way
        # leaves the index and last_seq as they were, and the next call reads it all
        # (its own rows included) from the store.
        pages: list[list[tuple[int, str, str, bytes | None]]] = []
        cursor = self.last_seq
        while rows := list(self.store.embeddings_after(cursor, limit=10_000, skip=own)):
            pages.append(rows)
            cursor = int(rows[-1][0])
        pages.append([r for r in written if int(r[0]) not in self._meta])
        added = 0
        for rows in pages:
            if rows:
                self._add(rows)
                added += len(rows)
        self._since_snapshot += added
        if self.snapshot_dir is not None and self._since_snapshot >= self.snapshot_every:
            self.save()
        return added

    def _add(self, rows: Sequence[tuple[int, str, str, bytes | None]]) -> None:
        seqs = np.array([r[0] for r in rows], dtype=np.int64)
        self.index.add(seqs, decode_embeddings([r[3] for r in rows], self.dim))
        for s, item_id, label, _ in rows:
            self._meta[int(s)] = (item_id, label)
        self.last_seq = max(self.last_seq, int(seqs.max()))

    def similar(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """``(id, similarity)`` of the ``k`` most similar past items of each vector: the
        search an alert's evidence uses (``stream.alerting.Alerter(search=...)``)."""
        return [[(n.id, n.similarity) for n in row] for row in self.neighbors(vectors, k)]

    def neighbors(
        self, vectors: np.ndarray, k: int, exclude: list[str] | None = None
    ) -> list[list[Neighbor]]:
        """The ``k`` most similar past items of each vector (never the item itself)."""
        if k == 0 or len(self.index) == 0:
            return [[] for _ in range(len(vectors))]
        sims, ids = self.index.search(vectors, k + 1)
        out: list[list[Neighbor]] = []
        for row, (srow, irow) in enumerate(zip(sims, ids, strict=True)):
            own = exclude[row] if exclude else None
            found = []
            for sim, seq in zip(srow, irow, strict=True):
                if seq < 0 or int(seq) not in self._meta:
                    continue
                item_id, label = self._meta[int(seq)]
                if item_id == own:
                    continue
                found.append(Neighbor(id=item_id, similarity=round(float(sim), 4), label=label))
            out.append(found[:k])
        return out

    def save(self) -> bool:
        """Write a snapshot; False when the disk refused it (full, read-only, gone).

        A snapshot only saves a rebuild from the store, so a failed one is logged
        and tried again after another quarter of ``snapshot_every`` items; it
        never fails the caller.
        """
        if self.snapshot_dir is None:
            return False
        try:
            self.index.save(self.snapshot_dir)
        except (OSError, RuntimeError) as exc:  # faiss raises RuntimeError for I/O errors
            self._since_snapshot = max(0, self.snapshot_every - self.snapshot_every // 4)
            log.warning(
                "index_snapshot_failed",
                path=str(self.snapshot_dir),
                error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            )
            return False
        self._since_snapshot = 0
        log.info("index_snapshot_saved", n=len(self.index), path=str(self.snapshot_dir))
        return True
