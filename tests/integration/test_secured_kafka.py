"""Moodwire against secured Kafka endpoints on loopback: TLS, mutual TLS, and SASL.

TLS is real (``socat`` terminating TLS 1.3 in front of Tansu, certificates from
a test CA; see tests/secure.py). SASL/SCRAM is real up to the broker's verdict:
Tansu checks the SCRAM proof, but no user can be made to exist in it here
(tests/secure.py says why), so only refusals can be observed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    log_events,
    moodwire_cli,
    produce,
    read_all,
    settings_env,
    signed,
    start_process,
    stop_process,
    wait_until,
)
from secure import Pki, SaslBroker, TlsBroker, make_pki

from moodwire.processes.learner import seed_memory
from moodwire.settings import Settings
from state.store import Store
from stream import access, operations
from stream.clients import check_connection, ensure_topics, make_consumer, make_producer
from stream.config import KafkaConfig, KafkaSecurity
from stream.errors import BrokerError, KafkaSecurityError
from stream.synthetic import demo_feed, labelled_headlines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with TlsBroker(pki, tmp_path_factory.mktemp("tls")) as broker:
        yield broker


@pytest.fixture(scope="module")
def mtls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with TlsBroker(pki, tmp_path_factory.mktemp("mtls"), mutual=True) as broker:
        yield broker


def _mutual(pki: Pki, **more: object) -> KafkaSecurity:
    return KafkaSecurity(
        security_protocol="SSL",
        ssl_cafile=pki.ca,
        ssl_certfile=pki.client_cert,
        ssl_keyfile=pki.client_key,
        **more,
    )


def _round_trip(kafka: KafkaConfig, topic: str, n: int = 20) -> tuple[int, float]:
    """Produce ``n`` records, read them with a fresh consumer group; (count, join+read s)."""
    ensure_topics(kafka, [topic], 2)
    producer = make_producer(kafka)
    for i in range(n):
        producer.send(topic, f"v{i}".encode())
    producer.flush(30)
    producer.close()
    t0 = time.monotonic()
    consumer = make_consumer(kafka, topic, group_id=f"g-{topic}")
    got = 0
    try:
        while got < n and time.monotonic() - t0 < 60:
            got += sum(len(v) for v in consumer.poll(500).values())
    finally:
        consumer.close()
    return got, time.monotonic() - t0


def test_server_verified_tls_carries_produce_and_a_consumer_group(tls: TlsBroker, pki: Pki) -> None:
    kafka = KafkaConfig(
        tls.bootstrap_servers, KafkaSecurity(security_protocol="SSL", ssl_cafile=pki.ca)
    )
    got, join_s = _round_trip(kafka, "tls-round-trip")
    print(f"TLS: 20 records back through a fresh group in {join_s:.1f} s")
    assert got == 20


def test_mutual_tls_carries_produce_and_a_consumer_group(mtls: TlsBroker, pki: Pki) -> None:
    got, join_s = _round_trip(KafkaConfig(mtls.bootstrap_servers, _mutual(pki)), "mtls-round-trip")
    print(f"mutual TLS: 20 records back through a fresh group in {join_s:.1f} s")
    assert got == 20


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("wrong_ca", r"certificate verify failed|self-signed certificate"),
        # The alert "certificate required", or (under load) the connection dropped: either
        # way the line names the client certificate setting.
        ("no_client_cert", r"MOODWIRE_KAFKA__SSL_CERTFILE"),
        # The alert "unknown ca", or the connection dropped: the line names the setting.
        ("stranger_cert", r"unknown ca|MOODWIRE_KAFKA__SSL_CERTFILE"),
        ("plaintext_to_tls", r"TLS|does not answer|closed|reset"),
    ],
)
def test_refused_tls_is_one_clear_error(
    mtls: TlsBroker, pki: Pki, which: str, expected: str
) -> None:
    sec = {
        "wrong_ca": KafkaSecurity(
            security_protocol="SSL",
            ssl_cafile=pki.wrong_ca,
            ssl_certfile=pki.client_cert,
            ssl_keyfile=pki.client_key,
        ),
        "no_client_cert": KafkaSecurity(security_protocol="SSL", ssl_cafile=pki.ca),
        "stranger_cert": KafkaSecurity(
            security_protocol="SSL",
            ssl_cafile=pki.ca,
            ssl_certfile=pki.stranger_cert,
            ssl_keyfile=pki.stranger_key,
        ),
    }.get(which)
    if sec is None:
        # A plaintext client at a TLS listener: kafka-python itself, no check of ours.
        with pytest.raises(Exception) as info:
            ensure_topics(mtls.bootstrap_servers, ["never"], 1, timeout_s=3)
        assert isinstance(info.value, BrokerError | KafkaSecurityError | OSError)
        return
    with pytest.raises(KafkaSecurityError, match=expected):
        check_connection(KafkaConfig(mtls.bootstrap_servers, sec), timeout_s=5)


def test_the_cli_says_a_refused_handshake_in_one_line_with_the_setting_to_fix(
    mtls: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text(json.dumps({"id": "a", "text": "Acme beats estimates"}) + "\n")
    env = {
        **settings_env(Settings(bootstrap_servers=mtls.bootstrap_servers, data_dir=tmp_path)),
        "MOODWIRE_KAFKA__SECURITY_PROTOCOL": "SSL",
        "MOODWIRE_KAFKA__SSL_CAFILE": str(pki.wrong_ca),
    }
    done = moodwire_cli(["produce", str(feed)], env=env, timeout=60)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "TLS with Kafka" in line]
    assert len(errors) == 1, done.stderr
    assert "MOODWIRE_KAFKA__SSL_CAFILE" in errors[0]
    assert "Traceback" not in done.stderr


def test_create_topics_off_names_the_missing_topic(tls: TlsBroker, pki: Pki) -> None:
    sec = KafkaSecurity(security_protocol="SSL", ssl_cafile=pki.ca, create_topics=False)
    with pytest.raises(BrokerError, match=r"never-created-topic.*MOODWIRE_KAFKA__CREATE_TOPICS"):
        ensure_topics(KafkaConfig(tls.bootstrap_servers, sec), ["never-created-topic"], 4)


def test_scram_with_an_unknown_user_or_wrong_password_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    with SaslBroker(tmp_path) as broker:
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            sec = KafkaSecurity(
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism=mechanism,
                sasl_username="alice",
                sasl_password="not-alices-password",
            )
            with pytest.raises(KafkaSecurityError, match=r"refused alice via SCRAM") as info:
                check_connection(KafkaConfig(broker.bootstrap_servers, sec), timeout_s=5)
            assert "not-alices-password" not in str(info.value)


def test_worker_learner_produce_and_operator_actions_over_mutual_tls(
    settings: Settings, mtls: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """The whole loop through one mutual-TLS listener: nothing of it speaks plaintext."""
    root = tmp_path / "registry"
    shutil.copytree(settings.resolved_registry(), root)
    cfg = dataclasses.replace(
        settings.learner, min_new_labels=10_000, retrain_every=100_000, min_holdout=8
    )
    s = settings.with_overrides(
        bootstrap_servers=mtls.bootstrap_servers,
        kafka=_mutual(pki, client_id="acme-risk"),
        registry=root,
        learner=cfg,
    )
    old = [r for r in labelled_headlines(60, seed=3)]
    from learner.data import LabelledText

    seed_memory(s, [LabelledText(r["text"], r["label"]) for r in old[:40]],
                [LabelledText(r["text"], r["label"]) for r in old[40:]])  # fmt: skip
    env = settings_env(s)
    assert env["MOODWIRE_KAFKA__SECURITY_PROTOCOL"] == "SSL"
    worker_log, learner_log = tmp_path / "worker.log", tmp_path / "learner.log"
    worker = start_process(["worker"], env, worker_log)
    learner = start_process(["learner"], env, learner_log)
    try:
        items = demo_feed(60, seed=5)
        feed = tmp_path / "feed.jsonl"
        feed.write_text("".join(json.dumps(i) + "\n" for i in items))
        done = moodwire_cli(["produce", str(feed)], env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        store = Store(s.resolved_store_url())
        wait_until(lambda: store.stats()["items"] == 60, 120, "60 items scored over mTLS")
        wait_until(lambda: log_events(learner_log, "learner_active"), 90, "the learner to start")

        labels = signed(
            [{"item_id": i["id"], "label": "positive", "source": "test"} for i in items[:10]]
        )
        produce(s.kafka_config(), s.topics.labels, labels)
        # The dashboard's actions, as its signed-in users, through the same client factory.
        config = s.operations("dashboard")
        for name, role in (("analyst-a", "analyst"), ("operator-o", "operator")):
            access.add_user(store, access.os_principal(), name, role, None, email=f"{name}@t.test")
        analyst = access.Principal("analyst-a", "analyst")
        operator = access.Principal("operator-o", "operator")
        operations.correct(config, items[20]["id"], by=analyst, label="negative")
        operations.request_retrain(config, by=operator, reason="tls test")
        wait_until(lambda: store.stats()["labels"]["total"] >= 11, 60, "labels stored")
        wait_until(lambda: log_events(learner_log, "retrain_requested"), 60, "the retrain request")
        scored = read_all(s.kafka_config(), s.topics.scored)
        assert len({r.key for r in scored}) == 60
    finally:
        stop_process(worker)
        stop_process(learner)
    for log in (worker_log, learner_log):
        checked = log_events(log, "kafka_connection_checked")
        assert checked and all(e["security_protocol"] == "SSL" for e in checked), log.read_text()
        text = log.read_text()
        assert not re.search(r"kafka_tls_failed|kafka_authentication_failed", text)
    assert store.stats()["items"] == 60
