"""Alert destinations against real local servers: HTTP(S) receivers and an SMTP server.

Every test stores the alert revisions as the alerter does and hands them to a real
:class:`~stream.notify.Notifier` over a real SQLite store; what arrives at the loopback
servers is what is asserted: one message when an episode opens at a destination's
threshold, updates marked as updates (same title; PagerDuty's dedup_key; e-mail's
References), one close, nothing again after a restart, a signed webhook body, and no
URL or secret in any log line.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from state.store import Store
from stream.destinations import Destination
from stream.notify import FAILED, SENT, Notifier
from stream.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

T0 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
WINDOW_S, COOLDOWN_S = 900, 3600
SECRET = b"whsec-7f3a9c0d1e2b"
DASHBOARD = "https://moodwire.example.com"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A loopback HTTP(S) server that records every POST and answers ``status``."""

    server: ThreadingHTTPServer
    scheme: str = "http"
    status: int = 200
    got: list[Received] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


def _receiver(context: ssl.SSLContext | None = None) -> Receiver:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec = holder["r"]
            rec.got.append(Received(self.path, dict(self.headers), body))
            self.send_response(rec.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    holder["r"] = Receiver(server, "https" if context else "http")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["r"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = _receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[Receiver]:
    """HTTPS on loopback with a self-signed certificate (made by openssl for the test)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    r = _receiver(context)
    yield r
    r.server.shutdown()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The claims are the store's: on both databases it runs on."""
    if request.param == "postgresql":
        return Store(request.getfixturevalue("pg_fresh"))
    return Store(f"sqlite:///{tmp_path / 'alerts.db'}")


def alert(
    revision: int,
    severity: str,
    *,
    alert_id: str = "al-acme-0001",
    window: int = 0,
    kind: str = "negative_surge",
) -> dict[str, Any]:
    """An alert revision as :meth:`stream.alerts.Alert.as_dict` makes it."""
    start = T0 + timedelta(seconds=WINDOW_S * window)
    return {
        "id": alert_id, "kind": kind, "scope": "entity", "entity": "ACME", "topic": None,
        "severity": severity, "window_start": start.isoformat(),
        "window_end": (start + timedelta(seconds=WINDOW_S)).isoformat(),
        "first_window_start": T0.isoformat(), "statistic": 4.5 + revision, "baseline": 0.18,
        "value": 0.6, "n": 40, "signals": {}, "baseline_windows": [], "similar": [],
        "evidence": {"item_ids": ["x1"], "n": 40, "negatives": 25, "top": [
            {"id": "x1", "text": "ACME recalls its flagship product", "score": -0.9,
             "label": "negative", "ts": start.isoformat()}]},
        "revision": revision, "details": {},
    }  # fmt: skip


def announce(store: Store, notifier: Notifier, data: dict[str, Any]) -> None:
    """What :class:`stream.alerting.Alerter` does: store the revision, hand it on if first."""
    if store.upsert_alert(data):
        notifier.notify(data)


def after_episode(data: dict[str, Any]) -> float:
    """A watermark past the episode's last window by the cool-down and one window."""
    end = datetime.fromisoformat(data["window_end"]).timestamp()
    return end + COOLDOWN_S + WINDOW_S


def build(store: Store, *destinations: Destination, **kw: Any) -> Notifier:
    kw.setdefault("webhook_secret", SECRET)
    return Notifier.build(
        destinations, store, dashboard_url=DASHBOARD, window_s=WINDOW_S,
        cooldown_s=COOLDOWN_S, backoff_s=0.01, check_every_s=0, **kw,
    )  # fmt: skip


def webhook(receiver: Receiver, min_severity: str = "warning", **kw: Any) -> Destination:
    return Destination(url=f"{receiver.base}/hooks/t0ps3cret", min_severity=min_severity, **kw)


def events(received: list[Received]) -> list[tuple[str, str]]:
    return [(r.json()["notification"]["event"], r.json()["severity"]) for r in received]


# -- the generic webhook -------------------------------------------------------------------


def test_webhook_body_is_signed_over_its_exact_bytes_with_a_timestamp(
    store: Store, receiver: Receiver
) -> None:
    notifier = build(store, webhook(receiver))
    announce(store, notifier, alert(1, "warning"))
    assert notifier.wait_idle()
    (got,) = receiver.got
    ts, sig = got.headers[TIMESTAMP_HEADER], got.headers[SIGNATURE_HEADER]
    # What a receiver does, by hand: HMAC-SHA256 of "<timestamp>." + the raw body.
    expected = (
        "sha256=" + hmac.new(SECRET, ts.encode() + b"." + got.body, hashlib.sha256).hexdigest()
    )
    assert hmac.compare_digest(sig, expected)
    assert verify_signature(got.body, SECRET, got.headers)
    # Any change to the body, the timestamp or the key breaks it.
    assert not verify_signature(got.body + b" ", SECRET, got.headers)
    assert not verify_signature(got.body, b"another-secret", got.headers)
    stale = {**got.headers, TIMESTAMP_HEADER: str(int(ts) - 3600)}
    assert not verify_signature(got.body, SECRET, stale)
    body = got.json()
    assert body["id"] == "al-acme-0001" and body["revision"] == 1  # the alert, as before
    assert body["notification"]["event"] == "opened"
    assert body["notification"]["update"] is False
    assert body["notification"]["dashboard_url"] == f"{DASHBOARD}/alerts?alert=al-acme-0001"
    notifier.close()


def test_one_message_per_episode_then_updates_then_one_close(
    store: Store, receiver: Receiver
) -> None:
    critical_only = _receiver()
    notifier = build(store, webhook(receiver), webhook(critical_only, "critical"))
    revisions = [alert(1, "warning"), alert(2, "warning", window=1),
                 alert(3, "critical", window=2), alert(4, "critical", window=3)]  # fmt: skip
    for data in revisions:
        announce(store, notifier, data)
    assert notifier.wait_idle()
    # Every severity: opened, then one update when it turned critical; revisions 2 and 4
    # said nothing new.
    assert events(receiver.got) == [("opened", "warning"), ("escalated", "critical")]
    update = receiver.got[1].json()["notification"]
    assert update["update"] is True and update["thread"] == "al-acme-0001"
    assert update["previous_severity"] == "warning"
    assert update["title"] == receiver.got[0].json()["notification"]["title"]
    # Critical only: the episode opens for it when it turns critical, once.
    assert events(critical_only.got) == [("opened", "critical")]
    assert critical_only.got[0].json()["revision"] == 3

    # Not closed while the watermark is inside the cool-down ...
    notifier.tick(after_episode(revisions[-1]) - WINDOW_S - 1)
    assert notifier.wait_idle() and len(receiver.got) == 2
    # ... closed once past it, to both, and only once.
    notifier.tick(after_episode(revisions[-1]))
    notifier.tick(after_episode(revisions[-1]) + 10_000)
    assert notifier.wait_idle()
    assert events(receiver.got)[-1] == ("closed", "critical") and len(receiver.got) == 3
    assert events(critical_only.got)[-1] == ("closed", "critical") and len(critical_only.got) == 2
    notifier.close()
    critical_only.server.shutdown()


def test_a_warning_episode_never_reaches_a_critical_destination(
    store: Store, receiver: Receiver
) -> None:
    notifier = build(store, webhook(receiver, "critical"))
    for r in (1, 2, 3):
        announce(store, notifier, alert(r, "warning", window=r))
    notifier.tick(after_episode(alert(3, "warning", window=3)))
    assert notifier.wait_idle()
    assert receiver.got == []  # not opened, so not closed either
    notifier.close()


def test_a_restarted_or_second_worker_does_not_send_again(store: Store, receiver: Receiver) -> None:
    first = build(store, webhook(receiver))
    announce(store, first, alert(1, "warning"))
    announce(store, first, alert(2, "critical", window=1))
    assert first.wait_idle()
    first.close()
    assert len(receiver.got) == 2

    # The restarted worker recomputes the same revisions: stored already, so not announced;
    # and even handed them directly, the store says they were told.
    again = build(store, webhook(receiver))
    other = build(store, webhook(receiver))
    for data in (alert(1, "warning"), alert(2, "critical", window=1)):
        announce(store, again, data)
        again.notify(data)
        other.notify(data)
    # Both look for closed episodes at once: one close goes out.
    mark = after_episode(alert(2, "critical", window=1))
    again.tick(mark)
    other.tick(mark)
    assert again.wait_idle() and other.wait_idle()
    assert events(receiver.got) == [("opened", "warning"), ("escalated", "critical"),
                                    ("closed", "critical")]  # fmt: skip
    # A revision already told of, handed over again after the close (a queue that ran
    # late, under load): nothing new, so no "reopened".
    other.notify(alert(2, "critical", window=1))
    assert other.wait_idle()
    assert events(receiver.got)[-1] == ("closed", "critical")
    # A later revision of a closed episode (a late item revived it) is an update, not new.
    announce(store, again, alert(3, "critical", window=2))
    assert again.wait_idle()
    assert events(receiver.got)[-1] == ("reopened", "critical")
    again.close()
    other.close()


def test_a_muted_episode_sends_nothing(store: Store, receiver: Receiver) -> None:
    notifier = build(store, webhook(receiver))
    store.upsert_alert(alert(1, "warning"))
    store.mute_alert("al-acme-0001", datetime.now(UTC) + timedelta(hours=1))
    notifier.notify(alert(1, "warning"))
    announce(store, notifier, alert(2, "critical", window=1))
    assert notifier.wait_idle() and receiver.got == []
    notifier.close()


def test_a_failing_destination_is_retried_counted_by_kind_and_logged_without_its_url(
    store: Store, receiver: Receiver
) -> None:
    broken = _receiver()
    broken.status = 500
    bad = Destination(url=f"{broken.base}/hooks/t0ps3cret-broken", retries=2)
    failed_before = FAILED.labels("webhook")._value.get()
    notifier = build(store, bad, webhook(receiver))
    with structlog.testing.capture_logs() as logs:
        announce(store, notifier, alert(1, "critical"))
        assert notifier.wait_idle(30)
    assert len(broken.got) == 3  # the first try and two retries
    assert events(receiver.got) == [("opened", "critical")]  # the other one is not held up
    assert FAILED.labels("webhook")._value.get() == failed_before + 1
    (failure,) = [e for e in logs if e["event"] == "notification_failed"]
    assert failure["kind"] == "webhook" and failure["error"] == "HTTP 500"
    assert failure["destination"] == bad.key
    text = json.dumps(logs, default=str)
    assert "t0ps3cret" not in text and str(broken.server.server_address[1]) not in text
    assert SECRET.decode() not in text
    row = store.notification("al-acme-0001", bad.key)
    assert row is not None and row["last_error"] == "HTTP 500" and row["delivered_at"] is None
    notifier.close()
    broken.server.shutdown()


def test_a_hung_destination_never_holds_up_the_caller(store: Store) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)  # accepts, never answers
    hung = Destination(url=f"http://127.0.0.1:{sock.getsockname()[1]}/x", timeout_s=30)
    notifier = Notifier.build([hung], store, queue_size=2, check_every_s=0)
    with structlog.testing.capture_logs() as logs:
        t = datetime.now(UTC)
        for i in range(20):
            data = alert(1, "critical", alert_id=f"al-{i}")
            store.upsert_alert(data)
            notifier.notify(data)
        assert (datetime.now(UTC) - t).total_seconds() < 1.0
    dropped = [e for e in logs if e["event"] == "notification_queue_full_dropped"]
    assert len(dropped) >= 17 and notifier.channels[0].dropped == len(dropped)
    notifier.close(timeout_s=1)
    sock.close()


# -- apprise destinations on loopback ------------------------------------------------------


def test_apprise_json_destination_on_loopback_keeps_its_title_across_updates(
    store: Store, receiver: Receiver
) -> None:
    dest = Destination(url=f"json://{receiver.hostport}/apprise?+X-Token=t0ps3cret")
    assert dest.kind == "json"
    notifier = build(store, dest)
    announce(store, notifier, alert(1, "warning"))
    announce(store, notifier, alert(2, "critical", window=1))
    notifier.tick(after_episode(alert(2, "critical", window=1)))
    assert notifier.wait_idle()
    bodies = [r.json() for r in receiver.got]
    assert len(bodies) == 3
    assert {b["title"] for b in bodies} == {"Moodwire alert: negative surge on ACME [al-acme-0001]"}
    assert [b["type"] for b in bodies] == ["warning", "failure", "success"]
    assert bodies[0]["message"].startswith("WARNING negative surge on ACME")
    assert bodies[1]["message"].startswith("Update (severity warning → critical)")
    assert bodies[2]["message"].startswith("Resolved: ")
    assert f"{DASHBOARD}/alerts?alert=al-acme-0001" in bodies[0]["message"]
    assert all(r.headers["X-Token"] == "t0ps3cret" for r in receiver.got)
    notifier.close()


def test_teams_workflow_destination_posts_to_a_loopback_https_host(
    store: Store, tls_receiver: Receiver
) -> None:
    # apprise's Teams (Workflows / Power Automate) plugin takes the host from the URL,
    # so a real HTTPS server on loopback receives it (self-signed: verify=no).
    dest = Destination(url=f"workflow://{tls_receiver.hostport}/wf0001/s1gn4ture?verify=no")
    assert dest.kind == "teams"
    notifier = build(store, dest)
    announce(store, notifier, alert(1, "critical"))
    notifier.tick(after_episode(alert(1, "critical")))
    assert notifier.wait_idle(30)
    assert len(tls_receiver.got) == 2
    first, last = (r.json() for r in tls_receiver.got)
    assert "/workflows/wf0001/triggers/manual/paths/invoke" in tls_receiver.got[0].path
    assert "sig=s1gn4ture" in tls_receiver.got[0].path
    text = json.dumps(first)
    assert "Moodwire alert: negative surge on ACME [al-acme-0001]" in text
    assert f"{DASHBOARD}/alerts?alert=al-acme-0001" in text
    assert "Moodwire alert: negative surge on ACME [al-acme-0001]" in json.dumps(last)
    assert "Resolved" in json.dumps(last)
    notifier.close()


def test_slack_payload_to_a_loopback_hook(
    store: Store, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # apprise's Slack plugin posts webhooks to hooks.slack.com only: its base address is
    # pointed at the loopback server; the URL parsing and the payload are apprise's own.
    from apprise.plugins.slack import NotifySlack

    monkeypatch.setattr(NotifySlack, "webhook_url", f"{receiver.base}/services")
    dest = Destination(
        url="slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7", min_severity="critical"
    )
    assert dest.kind == "slack"
    notifier = build(store, dest)
    announce(store, notifier, alert(1, "warning"))  # below its threshold
    announce(store, notifier, alert(2, "critical", window=1))
    assert notifier.wait_idle(30)
    (got,) = receiver.got
    assert got.path == "/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7"
    payload = got.json()
    text = json.dumps(payload)
    assert "Moodwire alert: negative surge on ACME [al-acme-0001]" in text
    assert "CRITICAL negative surge on ACME" in text
    assert "alerts?alert=al-acme-0001" in text
    notifier.close()


def test_pagerduty_uses_the_alert_id_as_dedup_key_and_resolves_on_close(
    store: Store, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # apprise's PagerDuty plugin posts to PagerDuty's Events API only: its address is
    # pointed at the loopback server; the event it builds is apprise's own.
    import apprise.plugins.pagerduty as pd

    monkeypatch.setitem(pd.PAGERDUTY_API_LOOKUP, "us", f"{receiver.base}/v2/enqueue")
    dest = Destination(url="pagerduty://r0utingkey@ap1key/moodwire")
    assert dest.kind == "pagerduty"
    notifier = build(store, dest)
    announce(store, notifier, alert(1, "warning"))
    announce(store, notifier, alert(2, "critical", window=1))
    notifier.tick(after_episode(alert(2, "critical", window=1)))
    assert notifier.wait_idle(30)
    opened, escalated, closed = (r.json() for r in receiver.got)
    assert {e["dedup_key"] for e in (opened, escalated, closed)} == {"al-acme-0001"}
    assert [e["event_action"] for e in (opened, escalated, closed)] == [
        "trigger",
        "trigger",
        "resolve",
    ]
    assert opened["routing_key"] == "r0utingkey" and opened["payload"]["source"] == "moodwire"
    assert opened["payload"]["severity"] == "warning"
    assert escalated["payload"]["severity"] == "critical"
    assert "Update (severity warning → critical)" in escalated["payload"]["summary"]
    assert opened["links"] == [{"href": f"{DASHBOARD}/alerts?alert=al-acme-0001"}]
    notifier.close()


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    got: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            got.append(envelope)
            return "250 OK"

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, got
    controller.stop()


def test_email_threads_updates_on_one_reference_and_subject(
    store: Store, smtp: tuple[int, list[Any]]
) -> None:
    port, got = smtp
    dest = Destination(
        url=f"mailto://moodwire@example.com?smtp=127.0.0.1&port={port}&mode=insecure"
        "&to=risk-desk@example.com",
        name="risk-desk-mail",
    )
    assert dest.kind == "email"
    notifier = build(store, dest)
    announce(store, notifier, alert(1, "warning"))
    announce(store, notifier, alert(2, "critical", window=1))
    notifier.tick(after_episode(alert(2, "critical", window=1)))
    assert notifier.wait_idle(30)
    assert len(got) == 3
    assert {tuple(e.rcpt_tos) for e in got} == {("risk-desk@example.com",)}
    assert {e.mail_from for e in got} == {"moodwire@example.com"}
    mails = [message_from_bytes(e.content) for e in got]
    assert {m["Subject"] for m in mails} == {
        "Moodwire alert: negative surge on ACME [al-acme-0001]"
    }
    assert {m["References"] for m in mails} == {"<al-acme-0001@moodwire>"}
    thread = "<al-acme-0001@moodwire>"
    assert [m["In-Reply-To"] for m in mails] == [None, thread, thread]  # updates reply
    assert len({m["Message-ID"] for m in mails}) == 3
    assert {m["From"] for m in mails} == {"Moodwire <moodwire@example.com>"}
    plain = [p.get_payload(decode=True).decode() for m in mails for p in m.walk()
             if p.get_content_type() == "text/plain"]  # fmt: skip
    assert "alerts?alert=al-acme-0001" in plain[0]
    assert plain[1].startswith("Update (severity warning → critical)")
    assert plain[2].startswith("Resolved: ")
    notifier.close()


def test_apprise_failures_are_logged_without_tokens(
    store: Store, capfd: pytest.CaptureFixture[str]
) -> None:
    # Everything that reaches the root logger, at every level (a deployment's stderr
    # handler sees no more). apprise's own lines print tokens: they must not get there.
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    root = logging.getLogger()
    level, root.level = root.level, logging.DEBUG
    root.addHandler(handler)
    try:
        # A malformed URL: a clear error, without the token.
        with pytest.raises(ValueError, match="apprise cannot use this slack:// URL") as bad:
            Destination(url="slack://T1JJ3T3L2/A1BRTD4JD/short-s3cret")
        assert "short-s3cret" not in str(bad.value)
        # Nothing listens: delivery fails; ours names the destination and kind only.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        dest = Destination(url=f"json://user:pa55w0rd-x@127.0.0.1:{port}/t0ps3cret", retries=1)
        notifier = build(store, dest)
        with structlog.testing.capture_logs() as logs:
            announce(store, notifier, alert(1, "critical"))
            assert notifier.wait_idle(30)
        notifier.close()
    finally:
        root.removeHandler(handler)
        root.level = level
    (failure,) = [e for e in logs if e["event"] == "notification_failed"]
    assert failure["kind"] == "json" and failure["attempts"] == 2
    assert "Connection error" in failure["error"]  # apprise's reason, redacted
    everything = json.dumps(logs, default=str) + sink.getvalue() + "".join(capfd.readouterr())
    for secret in ("pa55w0rd-x", "t0ps3cret", "short-s3cret"):
        assert secret not in everything, secret


def test_sent_counter_is_per_kind_and_event(store: Store, receiver: Receiver) -> None:
    before = SENT.labels("webhook", "opened")._value.get()
    notifier = build(store, webhook(receiver))
    announce(store, notifier, alert(1, "warning", alert_id="al-count"))
    assert notifier.wait_idle()
    assert SENT.labels("webhook", "opened")._value.get() == before + 1
    notifier.close()
