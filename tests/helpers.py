"""Helpers for integration tests on the real broker: produce, read back, run processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from kafka import TopicPartition

from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store, encode_embedding
from stream.clients import as_kafka, ensure_topics, make_producer, make_reader
from stream.config import KafkaConfig
from stream.synthetic import demo_feed


def produce(
    bootstrap: KafkaConfig | str,
    topic: str,
    values: list[bytes],
    keys: list[bytes | None] | None = None,
    partitions: int = 4,
) -> None:
    """Send ``values`` (plaintext ``host:port``, or a secured cluster's config)."""
    ensure_topics(bootstrap, [topic], partitions)
    producer = make_producer(as_kafka(bootstrap), client_id="moodwire-test")
    for i, value in enumerate(values):
        producer.send(topic, key=keys[i] if keys else None, value=value)
    producer.flush()
    producer.close()


# -- origins: every side of a test signs with a known key (stream/origins.py) ----------

TEST_LABELLER = "labeller:test"  # the origin test labels are signed as
TEST_ORIGINS = {
    name: f"test-key-of-{name}" for name in ("dashboard", "cli", "worker", "learner", TEST_LABELLER)
}
TEST_LABEL_ORIGINS = ("dashboard", "cli", TEST_LABELLER)  # the learner trains on these


def signed(
    payloads: list[dict], origin: str = TEST_LABELLER, key: str | None = None
) -> list[bytes]:
    """Labels or commands as ``origin`` sends them: signed with its test key (or ``key``)."""
    from pydantic import SecretStr

    from stream.origins import Signer

    signer = Signer(origin, SecretStr(key if key is not None else TEST_ORIGINS[origin]))
    return [signer.sign_json(p) for p in payloads]


def produce_items(bootstrap: KafkaConfig | str, topic: str, items: list[dict]) -> None:
    produce(
        bootstrap,
        topic,
        [json.dumps(i).encode() for i in items],
        [i["id"].encode() if "id" in i else None for i in items],
    )


def read_all(bootstrap: KafkaConfig | str, topic: str, timeout_s: float = 20.0) -> list:
    """Every record currently on ``topic`` (all partitions, from the start)."""
    consumer = make_reader(as_kafka(bootstrap), client_id="moodwire-test")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list = []
        deadline = time.monotonic() + timeout_s

        def at_end(tp: TopicPartition) -> bool:
            # To the high watermark the fetches report: Tansu's list-offsets answer counts
            # batches, not records, so it is only a lower bound there.
            high = consumer.highwater(tp)
            return high is not None and consumer.position(tp) >= max(high, ends[tp])

        while not all(at_end(tp) for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


ROOT = Path(__file__).resolve().parents[1]


def moodwire_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``moodwire ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "moodwire", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(stdout: str) -> dict:
    """The JSON object a reporting command prints as its last line."""
    return json.loads(stdout.strip().splitlines()[-1])


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "moodwire", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def log_events(log: Path, event: str) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that hands these settings to a `moodwire` subprocess."""
    return {**os.environ, **s.to_env(), "MOODWIRE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}


# -- a store for the dashboard's tests ---------------------------------------------------

DASH_T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _item(i: int, entity: str, label: str, topic: str, text: str) -> dict[str, Any]:
    p = {"negative": (0.8, 0.1, 0.1), "neutral": (0.1, 0.8, 0.1), "positive": (0.1, 0.1, 0.8)}
    neg, neu, pos = p[label]
    ts = DASH_T0 + timedelta(seconds=60 * i)
    vec = np.random.default_rng(i).normal(size=384).astype(np.float32)
    return {
        "id": f"it-{i}",
        "text": text,
        "ts": ts,
        "source": "wire" if i % 2 else "social",
        "entities": [entity],
        "meta": {},
        "label": label,
        "topic": topic,
        "p_negative": neg,
        "p_neutral": neu,
        "p_positive": pos,
        "confidence": max(neg, neu, pos),
        "model_version": "v1" if i < 200 else "v2",
        "neighbors": [{"id": f"it-{i - 1}", "similarity": 0.9, "label": "neutral"}] if i else [],
        "embedding": encode_embedding(vec / np.linalg.norm(vec)),
        "src_partition": 0,
        "src_offset": i,
        "kafka_ts": ts,
        "scored_at": ts,
    }


def populate_dashboard_store(store: Store, registry: Path) -> None:
    """300 items over five hours on ACME, GLBX and INIT (a negative INIT episode at the end),
    labels, two alerts, a drift event, and a registry where v2 replaced v1."""
    rows = []
    for i in range(300):
        if 240 <= i < 270:  # a late negative episode on INIT
            rows.append(
                _item(i, "INIT", "negative", "legal_regulatory", f"Initech sued over breach {i}")
            )
        else:
            entity = ("ACME", "GLBX", "INIT")[i % 3]
            label = ("negative", "neutral", "positive", "positive")[i % 4]
            topic = ("earnings", "markets")[i % 2]
            rows.append(_item(i, entity, label, topic, f"{entity} shares move on results {i}"))
    store.write_batch(rows, [])
    store.add_labels(
        [
            {"id": f"lab-{i}", "item_id": f"it-{i}", "text": None, "label": rows[i]["label"],
             "topic": None, "source": "analyst", "annotator": "ann", "ts": rows[i]["ts"]}
            for i in range(0, 300, 5)
        ]
    )  # fmt: skip
    store.upsert_alert(
        {
            "id": "al-init",
            "kind": "negative_surge",
            "scope": "entity",
            "entity": "INIT",
            "topic": None,
            "severity": "critical",
            "window_start": (DASH_T0 + timedelta(minutes=240)).isoformat(),
            "window_end": (DASH_T0 + timedelta(minutes=270)).isoformat(),
            "first_window_start": (DASH_T0 + timedelta(minutes=240)).isoformat(),
            "statistic": 7.5,
            "baseline": 0.25,
            "value": 1.0,
            "n": 30,
            "signals": {"negative_surge": {"statistic": 7.5}},
            "evidence": {
                "item_ids": [f"it-{i}" for i in range(240, 270)],
                "n": 30,
                "negatives": 30,
                "top": [
                    {
                        "id": "it-241",
                        "text": "Initech sued over breach 241",
                        "score": -0.7,
                        "label": "negative",
                        "ts": rows[241]["ts"].isoformat(),
                    }
                ],
            },  # fmt: skip
            "baseline_windows": [
                {
                    "start": (DASH_T0 + timedelta(minutes=30 * k)).isoformat(),
                    "n": 10,
                    "negatives": 2,
                }
                for k in range(8)
            ],
            "similar": [],
            "revision": 1,
            "details": {},
        }
    )
    store.upsert_alert(
        {
            "id": "al-drift", "kind": "drift", "scope": "stream", "severity": "warning",
            "window_start": (DASH_T0 + timedelta(minutes=200)).isoformat(),
            "window_end": (DASH_T0 + timedelta(minutes=201)).isoformat(),
            "first_window_start": (DASH_T0 + timedelta(minutes=200)).isoformat(),
            "statistic": 5.0, "baseline": 0.0, "value": 5.0, "n": 100, "signals": {},
            "evidence": {"item_ids": [], "n": 0, "top": []}, "baseline_windows": [],
            "revision": 1,
        }
    )  # fmt: skip
    store.record_drift(
        {"ts": DASH_T0 + timedelta(minutes=200), "detector": "adwin", "signal": "error_rate",
         "statistic": 0.2, "window": 100, "position": 200, "origin": "learner"}
    )  # fmt: skip
    reg = Registry(registry)

    def save(path: Path) -> None:
        (path / "weights.txt").write_text("not a model: the dashboard reads cards only")

    v1 = reg.write_version(save, {"kind": "bootstrap", "metrics": {"holdout": {"accuracy": 0.8}}})
    reg.promote(v1)
    gate = {"passed": True, "reasons": [], "new": {"n": 40, "serving": 0.6, "candidate": 0.8},
            "old": {"n": 80, "serving": 0.85, "candidate": 0.84}, "shadow": {"agreement": 0.7}}  # fmt: skip
    v2 = reg.write_version(
        save, {"kind": "incremental", "parent": v1, "gate": gate, "decision": "promote"}
    )
    reg.promote(v2)
    store.audit("learner", "promote", v2, "gate passed", {"previous": v1})


@contextlib.contextmanager
def small_disk(path: Path, size: str):  # noqa: ANN201 - a context manager of a Path
    """A tmpfs of ``size`` (e.g. "64k", "200m") mounted at ``path``: writes beyond it fail
    with ENOSPC, as on a full disk. Needs root (the test machines and CI run as root)."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def feed_items(n: int, seed: int = 0) -> list[dict]:
    """``n`` generated news items as a producer sends them (no ``meta``)."""
    return [{k: v for k, v in it.items() if k != "meta"} for it in demo_feed(n, seed=seed)]


def assert_exactly_once(settings: Settings, expected: set[str]) -> None:
    """Every expected item is stored once and published once on ``news.scored``, and only those."""
    store = Store(settings.resolved_store_url())
    stored = store.item_ids()
    assert len(stored) == len(set(stored)) == len(expected), "items lost or double-counted"
    assert set(stored) == expected
    scored = read_all(settings.bootstrap_servers, settings.topics.scored)
    scored_ids = [json.loads(r.value)["id"] for r in scored]
    assert sorted(scored_ids) == sorted(expected), "news.scored has gaps or duplicates"
    assert store.stats()["unpublished"] == 0


def clean_env(data_dir: Path, **moodwire: str) -> dict[str, str]:
    """This process's environment without any ``MOODWIRE_*``, for a CLI child on ``data_dir``
    (CPU, JSON logs, unbuffered); ``moodwire`` adds ``MOODWIRE_<NAME>`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOODWIRE_")}
    return env | {
        "MOODWIRE_DATA_DIR": str(data_dir),
        "MOODWIRE_DEVICE": "cpu",
        "MOODWIRE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **{f"MOODWIRE_{k.upper()}": v for k, v in moodwire.items()},
    }


OPERATOR_PASSWORD = "integration-operator-password"


def operator_env(store_url: str, name: str = "alice") -> dict[str, str]:
    """An operator user in the store (made once) and the environment a CLI action runs
    as it with, as an operator's shell would."""
    from stream import access

    store = Store(store_url)
    if store.user(name) is None:
        access.add_user(store, access.os_principal(), name, "operator", OPERATOR_PASSWORD)
    return {"MOODWIRE_USER": name, "MOODWIRE_CREDENTIAL": OPERATOR_PASSWORD}
