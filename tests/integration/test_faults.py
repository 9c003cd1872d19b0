"""Faults on the real parts: a real `moodwire worker` process, a real broker, real stores.

Each test breaks one thing the way an attacker or an unlucky operator would and checks
that the same worker process lives on and that every item ends up stored once and
published once (DESIGN.md, invariants 1–3):

* poison messages among good ones (SQLite and PostgreSQL);
* a refused Kafka send (a proxy resets every Produce request for a while);
* PostgreSQL cut off for 30 s mid-stream (a proxy in front of it goes down);
* the broker killed and restarted empty (the embedded broker keeps nothing);
* a tampered version promoted while a worker runs.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from helpers import (
    assert_exactly_once,
    feed_items,
    log_events,
    produce,
    produce_items,
    read_all,
    settings_env,
    signed,
    start_process,
    stop_process,
    wait_until,
)
from kafka import KafkaConsumer, TopicPartition

from moodwire.bench.proxy import ProxiedBroker, TcpProxy
from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store
from stream.broker import free_port
from stream.clients import ensure_topics
from stream.synthetic import demo_feed

pytestmark = pytest.mark.integration

HOSTILE = [
    b'{"text": "x", "ts": 1e308}',
    b'{"text": "profit\x00 warning"}',
    b"\x00",
    b'{"text": "x", "id": "a\\ud800"}',
    b'{"text": "x", "meta": {"v": NaN}}',
    ("[" * 30_000 + "]" * 30_000).encode(),
    b'{"text": "x", "meta": {"n": ' + b"7" * 5000 + b"}}",
    b'{"text": "x", "ts": "9999-12-31T23:59:59-05:00"}',
    json.dumps({"text": "x", "entities": ["\u00df" * 40]}).encode(),
    b'{"text": "x", "meta": {"a": ' + b"[" * 255 + b"]" * 255 + b"}}",
]


def _scored_ids(settings: Settings) -> list[str]:
    return [json.loads(r.value)["id"] for r in read_all(settings.bootstrap_servers, settings.topics.scored)]  # fmt: skip


def _probe(port: int, path: str) -> tuple[int, object]:
    """GET a worker's health endpoint: (status, JSON body or text)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            code, raw = r.status, r.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    text = raw.decode()
    return code, json.loads(text) if text.startswith("{") else text


def _committed(settings: Settings) -> dict[int, int | None]:
    reader = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    try:
        parts = reader.partitions_for_topic(settings.topics.news) or set()
        return {p: reader.committed(TopicPartition(settings.topics.news, p)) for p in parts}
    finally:
        reader.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_poison_messages_among_good_ones_the_same_worker_stores_every_good_item(
    settings: Settings, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        settings = settings.with_overrides(store_url=request.getfixturevalue("pg_fresh"))
    good = feed_items(60, seed=11)
    values = [json.dumps(i).encode() for i in good]
    for k, bad in enumerate(HOSTILE):  # spread through the stream, several per batch
        values.insert(5 + 6 * k, bad)
    produce(settings.bootstrap_servers, settings.topics.news, values)
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], settings_env(settings), log)
    store = Store(settings.resolved_store_url())
    try:
        wait_until(
            lambda: store.count_items() >= len(good) and store.stats()["rejected"] >= len(HOSTILE),
            180,
            "good items stored and the hostile ones dead-lettered",
        )
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()[-3000:]  # the same process, alive
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert set(store.item_ids()) == {i["id"] for i in good}
    dlq = [json.loads(r.value) for r in read_all(settings.bootstrap_servers, settings.topics.dlq)]
    assert len(dlq) == len(HOSTILE) and store.stats()["rejected"] == len(HOSTILE)
    assert all(d["reason"] and d["raw_bytes"] is not None for d in dlq)
    assert not log_events(log, "batch_failed_retrying")


@pytest.fixture
def proxied_broker(tmp_path: Path) -> ProxiedBroker:
    with ProxiedBroker(log_path=tmp_path / "broker.log") as broker:
        yield broker


def test_a_refused_send_is_never_counted_published_nor_committed_then_delivered(
    settings: Settings, tmp_path: Path, proxied_broker: ProxiedBroker
) -> None:
    settings = settings.with_overrides(bootstrap_servers=proxied_broker.bootstrap_servers)
    topics = settings.topics
    ensure_topics(settings.bootstrap_servers, topics.all(), settings.partitions)
    items = feed_items(40, seed=12)
    produce_items(settings.bootstrap_servers, topics.news, items)
    proxied_broker.proxy.refuse_kafka_produce(True)
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], settings_env(settings), log)
    store = Store(settings.resolved_store_url())
    try:
        # The first batch is stored; its publication cannot finish, so the worker holds it.
        wait_until(lambda: store.count_items() > 0, 120, "a batch stored")
        # The broker refuses every send: for a while nothing may count as published. Longer
        # than the producer's delivery timeout (30 s), so its sends expire and the worker
        # retries them itself, with a new producer, after checking the topic.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            stats = store.stats()
            assert stats["items"] > 0 and stats["unpublished"] == stats["items"]
            assert all(v is None for v in _committed(settings).values())
            time.sleep(1.0)
        assert proxied_broker.proxy.stats()["produce_refused"] > 0
        proxied_broker.proxy.refuse_kafka_produce(False)
        wait_until(
            lambda: (
                store.count_items() == len(items)
                and store.stats()["unpublished"] == 0
                and sum(v or 0 for v in _committed(settings).values()) == len(items)
            ),
            120,
            "every item published and committed once the broker takes sends again",
        )
        assert proc.poll() is None
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert_exactly_once(settings, {i["id"] for i in items})
    retries = [e for e in log_events(log, "retrying_after_outage") if e["step"] == "publish"]
    assert retries and log_events(log, "producer_replaced")


def test_postgresql_cut_off_for_30_s_mid_stream_same_worker_every_item_once(
    settings: Settings, tmp_path: Path, pg_fresh: str
) -> None:
    pg_url = pg_fresh
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    with TcpProxy(host, int(port)) as proxy:
        settings = settings.with_overrides(store_url=pg_url.replace(host_port, proxy.address))
        store = Store(settings.resolved_store_url())
        items = feed_items(600, seed=13)
        log = tmp_path / "worker.log"
        health_port = free_port()
        env = settings_env(settings) | {"MOODWIRE_METRICS_PORT": str(health_port)}
        proc = start_process(["worker"], env, log)
        feeder = threading.Thread(
            target=lambda: [
                produce_items(settings.bootstrap_servers, settings.topics.news, items[i : i + 50])
                or time.sleep(1.0)
                for i in range(0, len(items), 50)
            ],
            daemon=True,
        )
        try:
            feeder.start()
            wait_until(lambda: store.count_items() >= 150, 180, "the stream under way")
            assert _probe(health_port, "/readyz")[0] == 200
            proxy.go_down()
            time.sleep(15)
            # Said on the health endpoint and in the metrics while it lasts.
            code, body = _probe(health_port, "/readyz")
            assert code == 503 and body["dependencies"]["store"]["up"] is False, body
            assert _probe(health_port, "/healthz")[0] == 200  # alive: waiting, not stuck
            metrics = _probe(health_port, "/metrics")[1]
            assert 'moodwire_dependency_up{component="worker",dependency="store"} 0.0' in metrics
            time.sleep(15)
            assert proc.poll() is None, "the worker died during the outage"
            proxy.come_back()
            wait_until(lambda: store.count_items() >= len(items), 240, "every item stored")
            wait_until(lambda: store.stats()["unpublished"] == 0, 60, "every item published")
            wait_until(lambda: _probe(health_port, "/readyz")[0] == 200, 30, "ready again")
            feeder.join(60)
            assert proc.poll() is None
        finally:
            assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert_exactly_once(settings.with_overrides(store_url=pg_url), {i["id"] for i in items})
    downs = [e for e in log_events(log, "dependency_down") if e["dependency"] == "store"]
    recovered = [e for e in log_events(log, "dependency_recovered") if e["dependency"] == "store"]
    assert downs and recovered and recovered[-1]["outage_s"] >= 25


def test_the_broker_killed_and_restarted_same_worker_scores_what_comes_after(
    settings: Settings, tmp_path: Path, proxied_broker: ProxiedBroker
) -> None:
    settings = settings.with_overrides(bootstrap_servers=proxied_broker.bootstrap_servers)
    topics = settings.topics
    ensure_topics(settings.bootstrap_servers, topics.all(), settings.partitions)
    before = feed_items(80, seed=14)
    produce_items(settings.bootstrap_servers, topics.news, before)
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], settings_env(settings), log)
    store = Store(settings.resolved_store_url())
    try:
        wait_until(lambda: store.count_items() >= len(before), 120, "the first items stored")
        proxied_broker.kill()
        time.sleep(5)
        proxied_broker.restart()  # empty: no topics, no committed offsets
        ensure_topics(settings.bootstrap_servers, topics.all(), settings.partitions)
        after = feed_items(120, seed=15)
        produce_items(settings.bootstrap_servers, topics.news, after)
        wanted = {i["id"] for i in before + after}
        wait_until(lambda: set(store.item_ids()) >= wanted, 240, "items produced after the return")
        wait_until(lambda: store.stats()["unpublished"] == 0, 120, "all published")
        assert proc.poll() is None
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert sorted(store.item_ids()) == sorted({i["id"] for i in before + after})
    # The new broker's news.scored holds each item produced after its return once (what
    # was published before the kill went down with the old broker).
    scored = _scored_ids(settings)
    assert sorted(i for i in scored if i in {x["id"] for x in after}) == sorted(
        x["id"] for x in after
    )
    assert len(scored) == len(set(scored))


def test_a_tampered_version_promoted_under_a_running_worker_is_refused(
    settings: Settings, tmp_path: Path, model_registry: Path
) -> None:
    import shutil

    reg_dir = tmp_path / "registry"
    shutil.copytree(model_registry, reg_dir)
    settings = settings.with_overrides(registry=reg_dir)
    registry = Registry(reg_dir)
    v1 = registry.serving()

    def tampered(path: Path) -> None:
        for f in registry.path(v1).iterdir():
            if f.name != "card.json":
                shutil.copy(f, path / f.name)

    v2 = registry.write_version(tampered, {"kind": "test", "parent": v1})
    weights = registry.path(v2) / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still loads, serves garbage
    weights.write_bytes(bytes(data))
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], settings_env(settings), log)
    store = Store(settings.resolved_store_url())
    try:
        first = feed_items(30, seed=16)
        produce_items(settings.bootstrap_servers, settings.topics.news, first)
        wait_until(lambda: store.count_items() >= 30, 120, "scored by v1")
        _force_pointer(registry, v2)
        second = feed_items(60, seed=17)[30:]
        produce_items(settings.bootstrap_servers, settings.topics.news, second)
        wait_until(lambda: store.count_items() >= 60, 120, "scored after the bad promotion")
        assert proc.poll() is None
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0, log.read_text()[-3000:]
    assert store.stats()["by_model_version"] == {v1: 60}
    refused = log_events(log, "model_swap_refused")
    assert refused and refused[0]["version"] == v2 and "model.safetensors" in refused[0]["reason"]


def _force_pointer(registry: Registry, version: str) -> None:
    """What an attacker with write access to the registry does: point at a version directly
    (`Registry.promote` itself refuses a tampered version)."""
    state = json.loads(registry.serving_file.read_text())
    state = {**state, "version": version, "history": [*state.get("history", []), version]}
    tmp = registry.serving_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(registry.serving_file)


def _label_values(n: int, seed: int) -> list[bytes]:
    """Labels as a trusted labeller sends them: signed with its test key."""
    return signed(
        [
            {"text": i["text"], "label": i["meta"]["true_label"], "source": "test", "id": i["id"]}
            for i in demo_feed(n, seed=seed)
        ]
    )


def test_the_learner_waits_out_a_database_outage_and_dead_letters_bad_labels(
    settings: Settings, tmp_path: Path, pg_fresh: str, model_registry: Path
) -> None:
    pg_url = pg_fresh
    import shutil

    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    shutil.copytree(model_registry, tmp_path / "registry")
    with TcpProxy(host, int(port)) as proxy:
        s = settings.with_overrides(
            store_url=pg_url.replace(host_port, proxy.address), registry=tmp_path / "registry"
        )
        store = Store(s.resolved_store_url())
        log = tmp_path / "learner.log"
        proc = start_process(["learner"], settings_env(s), log)
        try:
            wait_until(lambda: log_events(log, "learner_active"), 120, "the learner to start")
            bad = [b"\x00", b'{"text": "x", "label": "negative", "source": "' + b"s" * 65 + b'"}']
            produce(s.bootstrap_servers, s.topics.labels, _label_values(40, 31) + bad)
            wait_until(lambda: store.stats()["labels"]["total"] == 40, 60, "labels stored")
            proxy.go_down()
            produce(s.bootstrap_servers, s.topics.labels, _label_values(60, 32))
            time.sleep(15)
            assert proc.poll() is None, "the learner died during the outage"
            proxy.come_back()
            wait_until(lambda: store.stats()["labels"]["total"] == 100, 120, "all labels stored")
            assert proc.poll() is None
        finally:
            assert stop_process(proc) == 0, log.read_text()[-3000:]
    dlq = [json.loads(r.value) for r in read_all(s.bootstrap_servers, s.topics.dlq)]
    assert sorted(d["raw_bytes"] for d in dlq) == sorted(len(b) for b in bad)
    assert all(d["topic"] == s.topics.labels and d["reason"] == "schema" for d in dlq)
    # Waited out in the same process: the store reported back after the outage, or (the
    # learner's lock is a PostgreSQL advisory lock, lost with its connection) the learner
    # stood by and led again once the database was back.
    recovered = [e for e in log_events(log, "dependency_recovered") if e["dependency"] == "store"]
    lost, active = log_events(log, "learner_lock_lost"), log_events(log, "learner_active")

    def at(e: dict) -> float:
        return datetime.fromisoformat(e["timestamp"]).timestamp()

    led_again = bool(lost) and len(active) >= 2 and at(active[-1]) - at(lost[0]) >= 10
    assert (recovered and recovered[-1]["outage_s"] >= 10) or led_again, (recovered, lost)
