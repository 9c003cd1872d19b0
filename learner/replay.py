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
from pathlib import Path
from typing import Protocol

from learner.data import LABELS, LabelledText


class ReplayBuffer(Protocol):
    capacity: int

    def add(self, item: LabelledText) -> None: ...

    def sample(self, n: int) -> list[LabelledText]: ...

    def __len__(self) -> int: ...


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

    def state(self) -> dict:
        return {lab: r.state() for lab, r in self._by_label.items()}

    def restore(self, state: dict) -> None:
        for lab, s in state.items():
            self._by_label[lab].restore(s)


class NoReplay:
    """Replay switched off."""

    capacity = 0

    def add(self, item: LabelledText) -> None:
        pass

    def sample(self, n: int) -> list[LabelledText]:
        return []

    def __len__(self) -> int:
        return 0


def save(buffer: Reservoir | ClassBalancedReservoir, path: Path) -> None:
    """Write the buffer atomically (a crash leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"kind": type(buffer).__name__, "capacity": buffer.capacity, "state": buffer.state()}
    fd, tmp = tempfile.mkstemp(prefix=".replay-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(
    path: Path, default: Reservoir | ClassBalancedReservoir
) -> Reservoir | ClassBalancedReservoir:
    """The persisted buffer, or ``default`` when there is none yet."""
    if not path.is_file():
        return default
    payload = json.loads(path.read_text(encoding="utf-8"))
    kinds = {"Reservoir": Reservoir, "ClassBalancedReservoir": ClassBalancedReservoir}
    buf = kinds[payload["kind"]](capacity=int(payload["capacity"]))
    buf.restore(payload["state"])
    return buf
