"""Small test doubles of the worker's parts, for fast unit tests of its logic.

The real model, index, broker and stores are in the integration tests; these stand in
where a test is about what the worker decides, not about the parts themselves.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord

from learner.data import LABELS

DIM = 8


def _number(word: str) -> float:
    try:
        return float(word)
    except ValueError:
        return 0.0  # a text without a number (the worker's canary) scores as item 0


class TextScorer:
    """Probabilities and vectors that are functions of the text, so rows can be traced."""

    device = "cpu"

    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.classifier = SimpleNamespace(labels=LABELS)

    def score(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = np.array([_number(t.rsplit(" ", 1)[-1]) for t in texts])
        probs = np.stack([np.full_like(n, 0.2), np.full_like(n, 0.3), np.full_like(n, 0.5)], 1)
        vectors = np.repeat(n[:, None], DIM, axis=1)  # every coordinate is the item's number
        return probs, vectors


class NoNeighbours:
    def neighbors(self, vectors: np.ndarray, k: int, exclude: list[str]) -> list[list]:
        return [[] for _ in range(len(vectors))]

    def catch_up(self, written: object = ()) -> None:
        pass

    def __len__(self) -> int:
        return 0


class Sent:
    """A send the broker acknowledged at once."""

    is_done = True
    exception = None

    def __init__(self) -> None:
        self.errbacks: list = []

    def add_errback(self, fn: Any) -> Sent:
        self.errbacks.append(fn)
        return self

    def succeeded(self) -> bool:
        return True


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Sent:
        self.sent.append((topic, value))
        return Sent()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def on(self, topic: str) -> list[bytes]:
        return [v for t, v in self.sent if t == topic]


class Consumer:
    config: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:1"}

    def __init__(self) -> None:
        self.commits: list[dict] = []

    def commit(self, offsets: dict) -> None:
        self.commits.append(offsets)


def record(offset: int, value: bytes, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(
        "news", partition, -1, offset, 1_700_000_000_000 + offset, 0, None, value, [], None,
        -1, len(value), -1,
    )  # fmt: skip


def item_value(n: int) -> bytes:
    return json.dumps({"id": f"item-{n}", "text": f"headline number {n}"}).encode()


class Failed:
    """A send the broker refused (or never answered)."""

    is_done = True

    def __init__(self, exc: Exception) -> None:
        self.exception = exc

    def add_errback(self, fn: Any) -> Failed:
        fn(self.exception)
        return self

    def succeeded(self) -> bool:
        return False


class FlakyProducer(Producer):
    """Fails the sends ``fail(topic, key, value)`` picks, with the exception it returns."""

    def __init__(self, fail: Any) -> None:
        super().__init__()
        self.fail = fail
        self.attempts: list[tuple[str, bytes | None]] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"") -> Any:
        self.attempts.append((topic, key))
        exc = self.fail(topic, key, value)
        if exc is not None:
            return Failed(exc)
        return super().send(topic, key, value)


class GroupConsumer(Consumer):
    """A consumer double that also knows its assignment, pauses, polls and seeks."""

    def __init__(self, partitions: tuple[int, ...] = (0, 1)) -> None:
        super().__init__()
        from kafka import TopicPartition

        self.assigned = {TopicPartition("news", p) for p in partitions}
        self.paused_now: set = set()
        self.polls = 0
        self.seeks: list = []

    def assignment(self) -> set:
        return set(self.assigned)

    def pause(self, *tps: Any) -> None:
        self.paused_now |= set(tps)

    def resume(self, *tps: Any) -> None:
        self.paused_now -= set(tps)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.polls += 1
        return {}

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))
