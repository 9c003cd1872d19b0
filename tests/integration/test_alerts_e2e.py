"""Alerts on the real broker and model: a scripted surge on one entity among steady ones.

A worker subprocess scores the demo feed (one item a second of event time, a
negative surge on INIT half-way); the alert rules run in the worker after each
batch. The surge must raise exactly one entity alert, for INIT, in the first
window that holds surge items; the steady entities none. The alert reaches the
store, `moodwire.alerts` and a local webhook (signed, once per episode, with
its dashboard link), and every number in it can be
recomputed from the stored items it names.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from helpers import (
    last_json,
    log_events,
    moodwire_cli,
    produce_items,
    read_all,
    settings_env,
    start_process,
    stop_process,
    wait_until,
)

from moodwire.settings import Settings
from state.store import Store
from stream.alerts import AlertConfig, negative_share_z
from stream.synthetic import demo_feed
from stream.webhook import verify_signature

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
SECRET = "e2e-webhook-secret"
DASHBOARD = "http://dashboard.example:8501"
CFG = AlertConfig(
    window_s=60, baseline_windows=10, min_baseline_windows=3, lateness_s=5, cooldown_s=300
)


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        data = json.loads(body)
        data["_signed"] = verify_signature(body, SECRET.encode(), dict(self.headers))
        type(self).received.append(data)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():  # noqa: ANN201
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", _Hook.received
    server.shutdown()


def test_a_scripted_surge_raises_one_alert_for_its_entity_with_evidence(
    settings: Settings, tmp_path: Path, webhook
) -> None:  # noqa: ANN001
    url, received = webhook
    settings = settings.with_overrides(
        alerts=CFG, webhook_url=url, webhook_secret=SECRET, dashboard_url=DASHBOARD
    )
    feed = demo_feed(1200, seed=11, start=START, surge_at=0.5, drift_at=1.0)
    surge = [f for f in feed if f["meta"]["phase"] == "surge"]
    first_surge = datetime.fromisoformat(surge[0]["ts"]).timestamp()
    env = settings_env(settings)
    store = Store(settings.resolved_store_url())
    log = tmp_path / "worker.log"
    proc = start_process(["worker"], env, log)
    try:
        produce_items(settings.bootstrap_servers, settings.topics.news, feed)
        wait_until(lambda: store.count_items() >= len(feed), 300, "the feed stored")
        # The windows are judged after the batch that moved the watermark past them.
        wait_until(lambda: store.alert_rows(), 60, "an alert stored")
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]

    alerts = store.alert_rows()
    by_entity = [a for a in alerts if a["scope"] == "entity"]
    assert [(a["entity"], a["kind"]) for a in by_entity] == [("INIT", "negative_surge")], alerts
    (alert,) = by_entity
    first_window = datetime.fromisoformat(alert["first_window_start"]).timestamp()
    assert first_window == (first_surge // 60) * 60, "not raised in the surge's first window"

    # Evidence: the window's INIT items, the most negative first, and past episodes.
    rows = store.items_by_ids(alert["evidence"]["item_ids"])
    assert len(rows) == alert["n"] == alert["evidence"]["n"]
    start = datetime.fromisoformat(alert["window_start"])
    end = datetime.fromisoformat(alert["window_end"])
    assert all(start <= r["ts"] < end and "INIT" in r["entities"] for r in rows.values())
    top = alert["evidence"]["top"]
    assert top and top[0]["text"] and [t["score"] for t in top] == sorted(t["score"] for t in top)
    assert alert["similar"], "no similar past episode found"
    assert all(datetime.fromisoformat(e["day"]).date() <= start.date() for e in alert["similar"])

    # Every number recomputed from the stored items the alert names.
    negatives = sum(r["label"] == "negative" for r in rows.values())
    base_ids = [i for w in alert["baseline_windows"] for i in w["item_ids"]]
    base = store.items_by_ids(base_ids)
    assert len(base) == sum(w["n"] for w in alert["baseline_windows"])
    z, p0, p = negative_share_z(
        negatives,
        len(rows),
        sum(r["label"] == "negative" for r in base.values()),
        len(base),
        alert["details"]["stream_negative_share"],
        CFG.prior_strength,
    )
    signal = alert["signals"]["negative_surge"]
    assert signal["statistic"] == pytest.approx(z, abs=1e-3)
    assert signal["baseline"] == pytest.approx(p0, abs=1e-5)
    assert signal["value"] == pytest.approx(p, abs=1e-5)

    # Announced once per revision on the alerts topic; to the webhook once per episode.
    published = [
        json.loads(r.value) for r in read_all(settings.bootstrap_servers, settings.topics.alerts)
    ]
    latest = {}
    for a in published:
        latest[a["id"]] = max(latest.get(a["id"], 0), a["revision"])
    assert latest == {a["id"]: a["revision"] for a in alerts}
    wait_until(lambda: {a["id"] for a in received} == set(latest), 30, "webhook deliveries")
    opened = [a["id"] for a in received if a["notification"]["event"] == "opened"]
    assert sorted(opened) == sorted(latest), received  # each episode opened exactly once
    updates = [a for a in received if a["notification"]["update"]]
    assert all(u["notification"]["event"] in ("escalated", "closed") for u in updates), updates
    assert all(a["_signed"] for a in received), "a webhook body failed its signature"
    for a in received:
        assert a["notification"]["dashboard_url"] == f"{DASHBOARD}/alerts?alert={a['id']}"
    assert log_events(log, "alerting_failed") == []

    # The command line shows the same alerts.
    out = moodwire_cli(["alerts", "--json", "--entity", "$init"], env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = json.loads(out.stdout.strip().splitlines()[-1])
    assert [a["id"] for a in listed] == [alert["id"]]
    for key in (
        "id",
        "kind",
        "entity",
        "topic",
        "severity",
        "window_start",
        "window_end",
        "statistic",
        "baseline",
        "evidence",
        "similar",
    ):
        assert key in listed[0]
    stats = last_json(moodwire_cli(["stats"], env=env).stdout)
    assert stats["alerts"]["total"] == len(alerts)
    assert stats["alerts"]["by_kind"]["negative_surge"] >= 1

    # Event time: replaying the same feed from a file gives the same alerts as living it.
    path = tmp_path / "feed.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in feed), encoding="utf-8")
    out = moodwire_cli(["backtest", str(path), "--no-progress"], env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    replay = last_json(out.stdout)
    assert replay["items"] == len(feed) and replay["late_items"] == 0
    assert {(a["id"], a["kind"], a["revision"]) for a in replay["alerts"]} == {
        (a["id"], a["kind"], a["revision"]) for a in alerts
    }
    live = {a["id"]: a["statistic"] for a in alerts}
    assert {a["id"]: a["statistic"] for a in replay["alerts"]} == pytest.approx(live)
