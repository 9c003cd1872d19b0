"""The scoring path end to end on the real broker, the real model and a real store."""

from __future__ import annotations

import json
import signal
import time

import pytest
from helpers import (
    assert_exactly_once,
    feed_items,
    log_events,
    produce,
    produce_items,
    read_all,
    settings_env,
    start_process,
    stop_process,
    wait_until,
)

from moodwire.settings import Settings
from state.store import Store

pytestmark = pytest.mark.integration


def test_every_item_is_scored_stored_and_published_once(settings: Settings, tmp_path) -> None:
    items = feed_items(150)
    produce_items(settings.bootstrap_servers, settings.topics.news, items)
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], settings_env(settings), log)
    store = Store(settings.resolved_store_url())
    try:
        wait_until(lambda: store.count_items() >= 150, 120, "150 items stored")
        time.sleep(1.0)  # anything extra would show up now
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert_exactly_once(settings, {i["id"] for i in items})

    one = json.loads(read_all(settings.bootstrap_servers, settings.topics.scored)[-1].value)
    assert one["model_version"] == "v1" and one["label"] in ("negative", "neutral", "positive")
    assert abs(sum(one["probs"].values()) - 1) < 1e-3
    # Neighbours are real past items: ids from the store, similarities in [-1, 1].
    assert len(one["neighbors"]) == settings.neighbors_k
    stored = set(store.item_ids())
    assert all(n["id"] in stored and -1 <= n["similarity"] <= 1 for n in one["neighbors"])
    assert log_events(log, "worker_stopped")[-1]["records"] == 150


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    settings: Settings, tmp_path
) -> None:
    n = 700
    items = feed_items(n, seed=1)
    produce_items(settings.bootstrap_servers, settings.topics.news, items)
    env = settings_env(settings)
    store = Store(settings.resolved_store_url())
    log = tmp_path / "worker.log"
    for round_, at_least in enumerate((100, 300)):
        proc = start_process(["worker"], env, log)
        wait_until(lambda a=at_least: store.count_items() >= a, 120, f"{at_least} items stored")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert store.count_items() < n, f"round {round_}: the kill came too late to test anything"
    proc = start_process(["worker"], env, log)
    try:
        wait_until(lambda: store.count_items() >= n, 180, f"all {n} items stored")
        time.sleep(1.5)
    finally:
        assert stop_process(proc) == 0
    assert_exactly_once(settings, {i["id"] for i in items})


def test_two_workers_split_the_partitions_and_together_store_everything(
    settings: Settings, tmp_path
) -> None:
    n = 400
    items = feed_items(n, seed=2)
    produce_items(settings.bootstrap_servers, settings.topics.news, items)
    env = settings_env(settings)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    procs = [start_process(["worker"], env, log) for log in logs]
    store = Store(settings.resolved_store_url())
    try:
        wait_until(lambda: store.count_items() >= n, 180, f"all {n} items stored")
        time.sleep(1.0)
    finally:
        codes = [stop_process(p) for p in procs]
    assert codes == [0, 0]
    assert_exactly_once(settings, {i["id"] for i in items})
    finals = []
    for log in logs:
        assigned = log_events(log, "partitions_assigned")
        assert assigned, f"{log.name} never got partitions"
        finals.append(set(assigned[-1]["partitions"]))
    # After the last rebalance the two own disjoint halves of the topic.
    assert finals[0] and finals[1] and not finals[0] & finals[1]
    assert len(finals[0] | finals[1]) == settings.partitions
    records = [log_events(log, "worker_stopped")[-1]["records"] for log in logs]
    assert sum(records) >= n and all(r > 0 for r in records)


def test_bad_input_goes_to_the_dead_letter_topic_and_the_stream_goes_on(
    settings: Settings, tmp_path
) -> None:
    good = feed_items(20, seed=3)
    bad = {
        "malformed_json": b'{"text": "unterminated',
        "schema": json.dumps({"headline": "no text field"}).encode(),
        "empty_text": json.dumps({"text": "  "}).encode(),
        "oversized": json.dumps({"text": "x" * (settings.max_message_bytes + 10)}).encode(),
        "invalid_utf8": b'{"text": "\xff\xfe broken"}',
        "not_an_object": b"[1, 2, 3]",
        "text_too_long": json.dumps({"text": "y" * (settings.max_text_chars + 1)}).encode(),
    }
    wrong_type = json.dumps({"text": 12345}).encode()
    values = [json.dumps(i).encode() for i in good[:10]] + list(bad.values()) + [wrong_type]
    values += [json.dumps(i).encode() for i in good[10:]]
    produce(settings.bootstrap_servers, settings.topics.news, values)
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], settings_env(settings), log)
    store = Store(settings.resolved_store_url())
    expected_rejects = len(bad) + 1
    try:
        wait_until(
            lambda: store.count_items() >= 20 and store.stats()["rejected"] >= expected_rejects,
            120,
            "good items stored and bad ones rejected",
        )
        time.sleep(1.0)
    finally:
        assert stop_process(proc) == 0
    assert set(store.item_ids()) == {i["id"] for i in good}
    dlq = [json.loads(r.value) for r in read_all(settings.bootstrap_servers, settings.topics.dlq)]
    assert len(dlq) == expected_rejects
    reasons = sorted(d["reason"] for d in dlq)
    assert reasons == sorted([*bad.keys(), "schema"])
    assert all(d["detail"] and d["topic"] == settings.topics.news for d in dlq)
    stats = store.stats()
    assert stats["rejected"] == expected_rejects and stats["rejected_by_reason"]["schema"] == 2
