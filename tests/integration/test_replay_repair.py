"""Crashes inside a batch, placed exactly, then a restart: still exactly once everywhere.

The SIGKILL test hits random points; this one hits the two windows that matter
on purpose: after the store write but before Kafka has the items, and after
Kafka acknowledged them but before the store recorded that.
"""

from __future__ import annotations

import json
import threading

import pytest
from helpers import produce_items, read_all, wait_until

from moodwire.processes.worker import build_worker
from moodwire.settings import Settings
from state.store import Store
from stream.synthetic import demo_feed

pytestmark = pytest.mark.integration


class Crash(Exception):
    pass


def _first_batch(worker) -> list:  # noqa: ANN001
    records: list = []
    wait_until(lambda: bool(records.extend(worker.poll_batch()) or records), 60, "records")
    return records


def test_crash_windows_are_repaired_on_replay(settings: Settings) -> None:
    n = 40
    items = [{k: v for k, v in i.items() if k != "meta"} for i in demo_feed(n, seed=5)]
    produce_items(settings.bootstrap_servers, settings.topics.news, items)
    store = Store(settings.resolved_store_url())

    # 1. Dies after the store write, before anything reaches news.scored.
    worker, close = build_worker(settings)
    scorer = worker.scorer
    records = _first_batch(worker)

    def no_send(*_a, **_k):  # noqa: ANN002, ANN003
        raise Crash("killed before publishing")

    worker.producer.send = no_send  # type: ignore[method-assign]
    with pytest.raises(Crash):
        worker.process(records)
    close()
    first = store.count_items()
    assert first == len(records) and store.stats()["unpublished"] == first
    assert read_all(settings.bootstrap_servers, settings.topics.scored) == []

    # 2. Dies after Kafka acknowledged the batch, before the store flagged it published.
    worker, close = build_worker(settings, scorer=scorer)
    records = _first_batch(worker)
    real_mark = worker.store.mark_published

    def no_mark(*_a, **_k):  # noqa: ANN002, ANN003
        raise Crash("killed before marking")

    worker.store.mark_published = no_mark  # type: ignore[method-assign]
    with pytest.raises(Crash):
        worker.process(records)
    worker.store.mark_published = real_mark  # type: ignore[method-assign]
    close()
    on_topic = read_all(settings.bootstrap_servers, settings.topics.scored)
    assert on_topic, "the second attempt should have published before it died"
    assert store.stats()["unpublished"] > 0

    # 3. A clean restart finishes the job without duplicating anything.
    worker, close = build_worker(settings, scorer=scorer)
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_until(
            lambda: store.count_items() == n and store.stats()["unpublished"] == 0, 120, "all done"
        )
    finally:
        stop.set()
        t.join(30)
        close()
    ids = [
        json.loads(r.value)["id"]
        for r in read_all(settings.bootstrap_servers, settings.topics.scored)
    ]
    assert sorted(ids) == sorted(i["id"] for i in items)
    assert sorted(store.item_ids()) == sorted(i["id"] for i in items)
