"""Replay memory: labelled examples kept to be replayed when the model learns something new.

A :class:`ReplayBuffer` is ``add``, ``sample`` and ``__len__``; strategies plug
in behind it. The default, :class:`ClassBalancedReservoir`, keeps an equal
share per label, each share a uniform reservoir sample of everything seen with
that label, so a flood of one class never evicts the memory of the others.
Buffers persist as JSON (written atomically) and survive restarts.

>>> buf = ClassBalancedReservoir(capacity=6, seed=0)
>>> for i in range(100):
...     buf.add(LabelledText(f"pos {i}", "positive"))
>>> buf.add(LabelledText("neg 0", "negative"))
>>> len(buf), sorted({x.label for x in buf.sample(6)})
(3, ['negative', 'positive'])
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from learner.data import LABELS, LabelledText
from learner.errors import MemoryFileError


class ReplayBuffer(Protocol):
    capacity: int

    def add(self, item: LabelledText) -> None: ...

    def sample(self, n: int) -> list[LabelledText]: ...

    def __len__(self) -> int: ...

    def items(self) -> list[LabelledText]: ...


class Reservoir:
    """A uniform sample of everything ever added (Vitter's algorithm R)."""

    def __init__(self, capacity: int = 5000, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.seed = seed
        self._rng = random.Random(seed)
        self._items: list[LabelledText] = []
        self._seen = 0

    def add(self, item: LabelledText) -> None:
        self._seen += 1
        if len(self._items) < self.capacity:
            self._items.append(item)
        else:
            j = self._rng.randrange(self._seen)
            if j < self.capacity:
                self._items[j] = item

    def sample(self, n: int) -> list[LabelledText]:
        return self._rng.sample(self._items, min(n, len(self._items)))

    def items(self) -> list[LabelledText]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def state(self) -> dict:
        return {"seen": self._seen, "items": [[x.text, x.label] for x in self._items]}

    def restore(self, state: dict) -> None:
        self._seen = int(state["seen"])
        self._items = [LabelledText(t, lab) for t, lab in state["items"]]


class ClassBalancedReservoir:
    """One reservoir per label, each with an equal share of the capacity."""

    def __init__(self, capacity: int = 5000, seed: int = 0) -> None:
        if capacity < len(LABELS):
            raise ValueError(f"capacity must be at least {len(LABELS)}")
        self.capacity = capacity
        self.seed = seed
        self._rng = random.Random(seed)
        share = capacity // len(LABELS)
        self._by_label = {lab: Reservoir(share, seed + i) for i, lab in enumerate(LABELS)}

    def add(self, item: LabelledText) -> None:
        self._by_label[item.label].add(item)

    def items(self) -> list[LabelledText]:
        return [x for r in self._by_label.values() for x in r.items()]

    def sample(self, n: int) -> list[LabelledText]:
        pool = self.items()
        return self._rng.sample(pool, min(n, len(pool)))

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_label.values())

    def seen_by_label(self) -> dict[str, int]:
        """How many of each label were ever added (the proportions to replay them in)."""
        return {lab: r._seen for lab, r in self._by_label.items()}

    def state(self) -> dict:
        return {lab: r.state() for lab, r in self._by_label.items()}

    def restore(self, state: dict) -> None:
        for lab, s in state.items():
            self._by_label[lab].restore(s)


class DiverseMemory:
    """Keeps memory spread over the text space: a flood from one region recycles that region.

    When full, a new example close to a remembered one of its label replaces it;
    one far from everything evicts the most crowded remembered example (of a
    sample of its label), so a flood of new-domain items never wipes out the old
    domains. Similarity is over hashed word features, cheap and model-free.

    >>> mem = DiverseMemory(capacity=4)
    >>> for t in ["old news one", "old news two", "bank results due", "rates on hold"]:
    ...     mem.add(LabelledText(t, "neutral"))
    >>> for i in range(100):
    ...     mem.add(LabelledText(f"new slang wen moon {i}", "neutral"))
    >>> sorted(x.text for x in mem.items())[:2]
    ['bank results due', 'new slang wen moon 99']
    """

    close = 0.5  # cosine similarity above which a new example replaces its neighbour
    crowd_sample = 64

    dim = 512

    def __init__(self, capacity: int = 5000, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.seed = seed
        self._rng = random.Random(seed)
        self._items: list[LabelledText] = []
        self._vectors = np.zeros((capacity, self.dim), dtype=np.float32)

    @classmethod
    def _vector(cls, text: str) -> np.ndarray:
        v = np.zeros(cls.dim, dtype=np.float32)
        for word in text.lower().split():
            v[zlib.crc32(word.encode("utf-8")) % cls.dim] += 1.0
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    def add(self, item: LabelledText) -> None:
        vec = self._vector(item.text)
        if len(self._items) < self.capacity:
            self._vectors[len(self._items)] = vec
            self._items.append(item)
            return
        same = np.array([x.label == item.label for x in self._items])
        pool = np.flatnonzero(same) if same.any() else np.arange(len(self._items))
        sims = self._vectors[pool] @ vec
        if sims.max() >= self.close:
            j = int(pool[int(np.argmax(sims))])
        else:
            sample = np.array(self._rng.sample(list(pool), min(self.crowd_sample, len(pool))))
            pair = self._vectors[sample] @ self._vectors[sample].T
            np.fill_diagonal(pair, -np.inf)
            j = int(sample[int(np.argmax(pair.max(axis=1)))])
        self._items[j] = item
        self._vectors[j] = vec

    def items(self) -> list[LabelledText]:
        return list(self._items)

    def sample(self, n: int) -> list[LabelledText]:
        return self._rng.sample(self._items, min(n, len(self._items)))

    def __len__(self) -> int:
        return len(self._items)

    def state(self) -> dict:
        return {"items": [[x.text, x.label] for x in self._items]}

    def restore(self, state: dict) -> None:
        self._items = []
        for t, lab in state["items"]:
            self.add(LabelledText(t, lab))


class NoReplay:
    """Replay switched off."""

    capacity = 0

    def items(self) -> list[LabelledText]:
        return []

    def add(self, item: LabelledText) -> None:
        pass

    def sample(self, n: int) -> list[LabelledText]:
        return []

    def __len__(self) -> int:
        return 0


Persistable = Reservoir | ClassBalancedReservoir | DiverseMemory


def save(buffer: Persistable, path: Path) -> None:
    """Write the buffer atomically (a crash leaves the previous file)."""
    payload = {"kind": type(buffer).__name__, "capacity": buffer.capacity, "state": buffer.state()}
    write_json_atomic(path, payload)


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise


def load(path: Path, default: Persistable) -> Persistable:
    """The persisted buffer, or ``default`` when there is none yet."""
    if not path.is_file():
        return default
    kinds = {k.__name__: k for k in (Reservoir, ClassBalancedReservoir, DiverseMemory)}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        buf = kinds[payload["kind"]](capacity=int(payload["capacity"]))
        buf.restore(payload["state"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise MemoryFileError(
            f"{path}: unreadable replay memory ({type(exc).__name__}: {str(exc)[:120]}); "
            "restore it from a backup, or delete it to start that memory afresh (the labels "
            "stay in the store)"
        ) from exc
    return buf
