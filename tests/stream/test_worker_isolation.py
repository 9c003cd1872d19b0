"""What the worker decides when one record, or one dependency, fails (invariants 1–3).

Fast: the real Worker, Publisher, Waiter and a real SQLite store, with doubles for the
model, the index and the Kafka clients; the same faults on the real broker and
PostgreSQL are in tests/integration/test_faults.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from doubles import (
    FlakyProducer,
    GroupConsumer,
    NoNeighbours,
    Producer,
    TextScorer,
    item_value,
    record,
)
from kafka.errors import CommitFailedError, KafkaTimeoutError, MessageSizeTooLargeError
from structlog.testing import capture_logs

from moodwire.settings import Settings, Topics
from state.store import Store
from stream.outage import Stopping
from stream.publish import Publisher
from stream.worker import Worker


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        bootstrap_servers="127.0.0.1:1",
        data_dir=tmp_path,
        topics=Topics(),
        retry_initial_s=0.01,
        retry_max_s=0.05,
    )


def text_value(n: int, text: str) -> bytes:
    return json.dumps({"id": f"item-{n}", "text": text}).encode()


class PickyScorer(TextScorer):
    """Fails on texts with POISON, gives NaN for texts with NAN; ``broken`` fails them all."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def score(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.broken or any("POISON" in t for t in texts):
            raise ValueError("the tokenizer chokes on this")
        probs, vectors = super().score([t.replace("NAN ", "") for t in texts])
        for i, t in enumerate(texts):
            if "NAN" in t:
                probs[i] = np.nan
        return probs, vectors


def make_worker(settings: Settings, *, scorer: Any = None, producer: Any = None, consumer: Any = None,
                store: Store | None = None, publisher: Publisher | None = None, **kw: Any) -> Worker:  # fmt: skip
    return Worker(
        settings.worker(),
        store or Store(settings.resolved_store_url()),
        scorer or PickyScorer(),
        NoNeighbours(),  # type: ignore[arg-type]
        consumer or GroupConsumer(),  # type: ignore[arg-type]
        publisher or producer or Producer(),  # type: ignore[arg-type]
        origin="worker:test",
        **kw,
    )


def dlq(worker: Worker, settings: Settings) -> list[dict]:
    return [json.loads(v) for v in worker.producer.on(settings.topics.dlq)]  # type: ignore[attr-defined]


def published_ids(worker: Worker, settings: Settings) -> list[str]:
    return [json.loads(v)["id"] for v in worker.producer.on(settings.topics.scored)]  # type: ignore[attr-defined]


# -- one record's own fault -------------------------------------------------------------


def test_a_text_the_model_fails_on_is_dead_lettered_and_the_batch_goes_on(
    settings: Settings,
) -> None:
    worker = make_worker(settings)
    records = [record(i, item_value(i)) for i in range(5)]
    records[2] = record(2, text_value(2, "headline POISON 2"))
    records[4] = record(4, text_value(4, "headline NAN 4"))
    result = worker.process(records)
    assert result.stored == 3 and result.rejected == 2
    assert sorted(worker.store.item_ids()) == ["item-0", "item-1", "item-3"]
    reasons = {d["offset"]: d["reason"] for d in dlq(worker, settings)}
    assert reasons == {2: "unscorable", 4: "unscorable"}
    assert sorted(published_ids(worker, settings)) == ["item-0", "item-1", "item-3"]
    assert len(worker.consumer.commits) == 1  # type: ignore[attr-defined]
    assert worker.store.stats()["unpublished"] == 0


class PoisonStore(Store):
    """Refuses, as a database does for bad data, any batch holding a row with POISON."""

    def write_batch(self, scored: list[dict], rejections: list[dict], **kw: Any) -> Any:
        if any("POISON" in r["text"] for r in scored):
            raise sa.exc.DataError("INSERT INTO items", {}, ValueError("value refused"))
        return super().write_batch(scored, rejections, **kw)


def test_a_row_the_store_refuses_is_found_by_bisection_and_dead_lettered(
    settings: Settings,
) -> None:
    store = PoisonStore(settings.resolved_store_url())
    scorer = TextScorer()
    worker = make_worker(settings, store=store, scorer=scorer)
    records = [record(i, item_value(i)) for i in range(9)]
    records[5] = record(5, text_value(5, "POISON headline 5"))
    result = worker.process(records)
    assert result.stored == 8 and result.rejected == 1
    assert "item-5" not in store.item_ids() and len(store.item_ids()) == 8
    (letter,) = dlq(worker, settings)
    assert letter["reason"] == "unstorable" and letter["offset"] == 5
    assert "DataError" in letter["detail"]
    assert sorted(published_ids(worker, settings)) == sorted(
        f"item-{i}" for i in range(9) if i != 5
    )
    assert len(worker.consumer.commits) == 1  # type: ignore[attr-defined]


def test_a_record_the_broker_refuses_for_its_size_moves_to_the_dead_letters(
    settings: Settings,
) -> None:
    def refuse(topic: str, key: bytes | None, value: bytes) -> Exception | None:
        if topic == settings.topics.scored and key == b"item-1":
            return MessageSizeTooLargeError("larger than the broker's message.max.bytes")
        return None

    worker = make_worker(settings, producer=FlakyProducer(refuse))
    result = worker.process([record(i, item_value(i)) for i in range(3)])
    assert result.stored == 2 and result.rejected == 1
    assert sorted(worker.store.item_ids()) == ["item-0", "item-2"]
    (letter,) = dlq(worker, settings)
    assert letter["reason"] == "unpublishable" and "MessageSizeTooLarge" in letter["detail"]
    assert worker.store.stats()["unpublished"] == 0
    assert len(worker.consumer.commits) == 1  # type: ignore[attr-defined]


# -- a dependency's fault ---------------------------------------------------------------


def test_failed_sends_are_retried_and_nothing_counts_as_published_before_its_ack(
    settings: Settings,
) -> None:
    seen_at_failure: list[tuple[int, int]] = []
    worker: Worker | None = None
    fails = {"left": 2}

    def refuse_twice(topic: str, key: bytes | None, value: bytes) -> Exception | None:
        if topic == settings.topics.scored and key == b"item-2" and fails["left"]:
            fails["left"] -= 1
            assert worker is not None
            seen_at_failure.append(
                (worker.store.stats()["unpublished"], len(worker.consumer.commits))  # type: ignore[attr-defined]
            )
            return KafkaTimeoutError("Expiring 1 record(s): no acknowledgement")
        return None

    producer = FlakyProducer(refuse_twice)
    worker = make_worker(settings, producer=producer)
    with capture_logs() as logs:
        result = worker.process([record(i, item_value(i)) for i in range(4)])
    assert result.stored == 4
    # While item-2 was failing: all four stored, none flagged published, nothing committed
    # (rows are flagged once the whole batch is acknowledged, each only if it was).
    assert seen_at_failure == [(4, 0), (4, 0)]
    assert sorted(published_ids(worker, settings)) == [f"item-{i}" for i in range(4)]
    assert [k for t, k in producer.attempts if t == settings.topics.scored].count(b"item-2") == 3
    assert worker.store.stats()["unpublished"] == 0
    assert len(worker.consumer.commits) == 1  # type: ignore[attr-defined]
    events = [e["event"] for e in logs]
    assert "retrying_after_outage" in events and "dependency_recovered" in events


def test_a_resend_skips_what_the_topic_already_holds(settings: Settings) -> None:
    landed: set[str] = set()

    def lose_the_ack(topic: str, key: bytes | None, value: bytes) -> Exception | None:
        if topic == settings.topics.scored and key == b"item-1" and not landed:
            landed.add("item-1")  # written by the broker, but the acknowledgement was lost
            return KafkaTimeoutError("request timed out")
        return None

    producer = FlakyProducer(lose_the_ack)
    publisher = Publisher(lambda: producer, on_topic=lambda topic, keys: keys & landed)
    worker = make_worker(settings, publisher=publisher)
    worker.process([record(i, item_value(i)) for i in range(3)])
    sends = [k for t, k in producer.attempts if t == settings.topics.scored]
    assert sends.count(b"item-1") == 1  # not sent again: the topic had it
    assert worker.store.stats()["unpublished"] == 0


class FlakyStore(Store):
    """The database is unreachable for the first ``down`` write attempts."""

    def __init__(self, url: str, down: int) -> None:
        super().__init__(url)
        self.down = down
        self.attempts = 0

    def write_batch(self, scored: list[dict], rejections: list[dict], **kw: Any) -> Any:
        self.attempts += 1
        if self.attempts <= self.down:
            raise sa.exc.OperationalError(
                "INSERT", {}, ConnectionRefusedError("connection refused")
            )
        return super().write_batch(scored, rejections, **kw)


def test_a_store_outage_is_waited_out_with_partitions_paused(settings: Settings) -> None:
    store = FlakyStore(settings.resolved_store_url(), down=4)
    consumer = GroupConsumer()
    worker = make_worker(settings, store=store, consumer=consumer)
    result = worker.process([record(i, item_value(i)) for i in range(6)])
    assert result.stored == 6 and store.attempts == 5
    assert consumer.polls > 0  # kept polling (heartbeats, group membership) while waiting
    assert consumer.paused_now == set()  # and resumed afterwards
    assert worker.health.is_up("store")
    assert len(consumer.commits) == 1 and store.stats()["unpublished"] == 0


def test_a_stop_during_an_outage_leaves_the_batch_uncommitted(settings: Settings) -> None:
    store = FlakyStore(settings.resolved_store_url(), down=10**9)
    worker = make_worker(settings, store=store)
    stop = threading.Event()
    worker.set_stop(stop)
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(Stopping):
        worker.process([record(i, item_value(i)) for i in range(3)])
    assert worker.consumer.commits == []  # type: ignore[attr-defined]
    assert not worker.health.is_up("store")
    assert worker.health.snapshot()["store"]["error"].startswith("OperationalError")


class FakeWatcher:
    """A rollback arrives while the worker waits on a broken model."""

    def __init__(self, scorer: PickyScorer) -> None:
        self.scorer = scorer
        self.refreshes = 0

    def refresh(self, scorer: Any) -> None:
        self.refreshes += 1
        if self.refreshes == 3:
            self.scorer.broken = False
            scorer.version = "v0"


def test_a_model_that_fails_on_everything_is_waited_on_until_a_rollback(settings: Settings) -> None:
    scorer = PickyScorer()
    scorer.broken = True
    watcher = FakeWatcher(scorer)
    worker = make_worker(settings, scorer=scorer, serving=watcher)
    result = worker.process([record(i, item_value(i)) for i in range(3)])
    assert result.stored == 3 and result.rejected == 0  # no item was blamed
    assert all(worker.store.get_item(f"item-{i}")["model_version"] == "v0" for i in range(3))
    assert worker.health.is_up("model") and watcher.refreshes >= 3


def test_a_commit_refused_after_a_rebalance_is_not_an_error(settings: Settings) -> None:
    class Rebalanced(GroupConsumer):
        def commit(self, offsets: dict) -> None:
            raise CommitFailedError("the group rebalanced")

    worker = make_worker(settings, consumer=Rebalanced())
    with capture_logs() as logs:
        result = worker.process([record(i, item_value(i)) for i in range(2)])
    assert result.stored == 2 and worker.store.stats()["unpublished"] == 0
    assert any(e["event"] == "commit_lost_to_rebalance" for e in logs)


class ScriptedConsumer(GroupConsumer):
    """Serves one batch; after a seek back to it, serves it again."""

    def __init__(self, records: list) -> None:
        super().__init__(partitions=(0,))
        self.pending = list(records)
        self.all = list(records)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.polls += 1
        if not self.pending or self.paused_now:
            return {}
        out, self.pending = self.pending, []
        from kafka import TopicPartition

        return {TopicPartition("news", 0): out}

    def seek(self, tp: Any, offset: int) -> None:
        super().seek(tp, offset)
        self.pending = [r for r in self.all if r.offset >= offset]


def test_an_unexpected_failure_reads_the_batch_again_instead_of_exiting(settings: Settings) -> None:
    records = [record(i, item_value(i)) for i in range(4)]
    consumer = ScriptedConsumer(records)
    store = Store(settings.resolved_store_url())
    real = store.mark_published
    calls = {"n": 0}

    def bug_once(*a: Any, **k: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug nobody classified")
        real(*a, **k)

    store.mark_published = bug_once  # type: ignore[method-assign]
    producer = Producer()

    def on_topic(topic: str, keys: set[str]) -> set[str]:  # the topic is what was sent
        return keys & {json.loads(v)["id"] for v in producer.on(topic)}

    publisher = Publisher(lambda: producer, on_topic=on_topic)
    worker = make_worker(settings, store=store, consumer=consumer, publisher=publisher)
    stop = threading.Event()

    def stop_when_done(_result: Any) -> None:
        stop.set()

    with capture_logs() as logs:
        t = threading.Thread(target=worker.run, args=(stop,), kwargs={"on_batch": stop_when_done})
        t.start()
        t.join(20)
    assert not t.is_alive()
    assert any(e["event"] == "batch_failed_retrying" for e in logs)
    assert consumer.seeks and consumer.seeks[0][1] == 0  # rewound to the batch's start
    assert sorted(store.item_ids()) == [f"item-{i}" for i in range(4)]
    assert store.stats()["unpublished"] == 0 and len(consumer.commits) == 1
    # The first pass published and failed to flag; the second found them on the topic.
    assert sorted(published_ids(worker, settings)) == [f"item-{i}" for i in range(4)]
