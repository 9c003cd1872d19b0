"""Personal data masked before it reaches a disk or a topic; the worker's /metrics series.

On the real broker with the real model: a worker process scores a feed in which
some items (and a message it rejects) hold e-mail addresses, phone, IBAN, card
and account numbers. With ``MOODWIRE_MASK_PERSONAL_DATA`` on, no byte of any
original is in any file under the data dir (the SQLite file, its WAL, the index,
the worker's log), the registry, or any message on ``news.scored`` and
``news.dlq``; with it off they are all found there (so the scan can fail).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    feed_items,
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
from stream.broker import free_port

pytestmark = pytest.mark.integration

EMAIL = "jane.roe.4711@example-mail.com"
PHONE = "+44 20 7946 0958"
IBAN = "GB29 NWBK 6016 1331 9268 19"
CARD = "4539 1488 0343 6467"
ACCOUNT = "73920461538"
TAKE_OUT = "tipster.99@leaks.example.org"  # only in a message the worker rejects
# Every form an original could take on disk or on the wire.
NEEDLES = {
    "email": [EMAIL, "jane.roe.4711"],
    "phone": ["7946 0958", "2079460958"],
    "iban": [IBAN, IBAN.replace(" ", "")],
    "card": [CARD, CARD.replace(" ", "")],
    "account": [ACCOUNT],
    "rejected": [TAKE_OUT, "tipster.99"],
}


def _personal_items() -> list[dict]:
    return [
        {"id": "pd-1", "text": f"ACME whistleblower: write to {EMAIL} before the results"},
        {"id": "pd-2", "text": f"Call our desk on {PHONE} for the $ACME 3.2% coupon"},
        {"id": "pd-3", "text": f"Wire the refund to IBAN {IBAN} by 2024-05-01"},
        {"id": "pd-4", "text": f"Card {CARD} charged twice; $INIT stock slides 4%"},
        {"id": "pd-5", "text": f"Customer account {ACCOUNT} frozen as GLBX probe widens"},
        # In the source and meta, not the text; and an id that is an address.
        {"text": "GLBX beats estimates", "source": f"tips {EMAIL}", "meta": {"by": PHONE}},
        {"id": f"user:{EMAIL}", "text": "INIT guidance raised for the year"},
    ]


def _rejected_values() -> list[bytes]:
    return [
        b'{"text": "leak from ' + TAKE_OUT.encode() + b'", "ts": "not a time"}',
        b'{"text": "unterminated ' + TAKE_OUT.encode(),
    ]


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in sorted(root.rglob("*")) if p.is_file()]


def _where(needles: dict[str, list[str]], blobs: dict[str, bytes]) -> dict[str, list[str]]:
    """Which kinds of original are found in which blobs."""
    found: dict[str, list[str]] = {}
    for kind, forms in needles.items():
        for name, blob in blobs.items():
            if any(form.encode() in blob for form in forms):
                found.setdefault(kind, []).append(name)
    return found


@pytest.mark.parametrize("masked", [True, False], ids=["masking_on", "masking_off"])
def test_no_original_reaches_a_disk_or_a_topic_when_masking_is_on(
    settings: Settings, tmp_path: Path, masked: bool
) -> None:
    settings = settings.with_overrides(mask_personal_data=masked)
    good = feed_items(30, seed=5) + _personal_items()
    produce_items(settings.bootstrap_servers, settings.topics.news, good)
    produce(settings.bootstrap_servers, settings.topics.news, _rejected_values())
    log = tmp_path / "worker.log"  # under the data dir: scanned too
    proc = start_process(["worker"], settings_env(settings), log)
    store = Store(settings.resolved_store_url())
    try:
        wait_until(
            lambda: store.count_items() >= len(good) and store.stats()["rejected"] >= 2,
            180,
            "every item stored and both bad messages rejected",
        )
        time.sleep(1.0)
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    store.engine.dispose()
    assert store.count_items() == len(good)

    files = _files(settings.data_dir, settings.resolved_registry())
    names = {p.name for p in files}
    assert "moodwire.db" in names and any(p.parent.name == "index" for p in files), names
    blobs = {str(p.relative_to(p.anchor)): p.read_bytes() for p in files}
    values: dict[str, list[bytes]] = {}
    for topic in (settings.topics.scored, settings.topics.dlq):
        for rec in read_all(settings.bootstrap_servers, topic):
            blobs[f"{topic}@{rec.partition}:{rec.offset}"] = (rec.key or b"") + b" " + rec.value
            values.setdefault(topic, []).append(rec.value)
    found = _where(NEEDLES, blobs)

    scored = {d["id"]: d for d in map(json.loads, values[settings.topics.scored])}
    dlq = [json.loads(v) for v in values[settings.topics.dlq]]
    assert len(dlq) == 2 and all(d["raw_sha256"] for d in dlq)
    if masked:
        assert found == {}, f"originals found: {found}"
        texts = {i: scored[i]["text"] for i in ("pd-1", "pd-2", "pd-3", "pd-4", "pd-5")}
        assert texts["pd-1"] == "ACME whistleblower: write to [EMAIL] before the results"
        assert "[PHONE]" in texts["pd-2"] and "$ACME 3.2% coupon" in texts["pd-2"]
        assert "[IBAN] by 2024-05-01" in texts["pd-3"] and "[CARD]" in texts["pd-4"]
        assert "account [ACCOUNT]" in texts["pd-5"]
        assert any(i.startswith("masked-") for i in scored)  # the id that was an address
        assert all(d["raw_base64"] is None and "[EMAIL]" in d["raw"] for d in dlq)
        # The rest of the feed is as it came: 30 generated headlines unchanged.
        feed = {i["id"]: i["text"] for i in good[:30]}
        assert all(scored[i]["text"] == t for i, t in feed.items())
    else:
        assert set(found) == set(NEEDLES), f"only {sorted(found)} found with masking off"
        db = [k for k in found["email"] if re.search(r"moodwire\.db", k)]
        assert db, found["email"]  # in the store's files
        assert any(settings.topics.scored in k for k in found["card"])
        assert any(settings.topics.dlq in k for k in found["rejected"])


def _scrape(port: int) -> dict[tuple[str, str], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def _series(metrics: dict[tuple[str, str], float], name: str) -> dict[str, float]:
    return {labels: v for (n, labels), v in metrics.items() if n == name}


def test_a_running_worker_reports_version_lag_latency_index_and_idle_time(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    n = 120
    items = feed_items(n, seed=6)
    produce_items(settings.bootstrap_servers, settings.topics.news, items)
    produce(settings.bootstrap_servers, settings.topics.news, [b'{"text": ""}'])  # rejected
    env = settings_env(settings) | {"MOODWIRE_METRICS_PORT": str(port)}
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], env, log)
    store = Store(settings.resolved_store_url())
    try:
        wait_until(lambda: store.count_items() >= n, 180, f"{n} items stored")

        def drained() -> bool:
            lag = _series(_scrape(port), "moodwire_consumer_lag")
            return len(lag) == settings.partitions and all(v == 0 for v in lag.values())

        # Lag is refreshed at most every 5 s: 0 on every partition soon after the drain.
        wait_until(drained, 30, "lag 0 on every partition")
        metrics = _scrape(port)
        time.sleep(1.2)
        later = _scrape(port)
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]

    version = _series(metrics, "moodwire_serving_model_info")
    assert version == {'{model_version="v1"}': 1.0}
    assert _series(metrics, "moodwire_produce_to_stored_seconds_count") == {"": float(n)}
    latency_sum = _series(metrics, "moodwire_produce_to_stored_seconds_sum")[""]
    assert 0 < latency_sum / n < 180  # produced before the worker started: seconds, not hours
    assert _series(metrics, "moodwire_index_items") == {"": float(n)}
    idle = _series(metrics, "moodwire_seconds_since_last_batch")[""]
    idle_later = _series(later, "moodwire_seconds_since_last_batch")[""]
    assert 0 <= idle < 60 and idle_later >= idle + 1.0  # computed at scrape time
    # A line logged inside a batch carries the batch's context.
    (rejected,) = [x for x in _json_lines(log) if x.get("event") == "item_rejected"]
    assert rejected["model_version"] == "v1" and rejected["worker"].startswith("worker:")
    part = f"{settings.topics.news}:{rejected['partition']}"
    assert part in rejected["partitions"]
    low, high = rejected["offsets"][part]
    assert low <= rejected["offset"] <= high


def _json_lines(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
