"""Alerts where people look: one message per episode to each destination, then updates.

An alert episode (one alert id, several revisions: see :mod:`stream.alerts`)
tells each destination (:mod:`stream.destinations`) of itself

* once, when it opens at or above the destination's ``min_severity``
  (``opened``; an episode that starts as a warning opens for a critical-only
  destination when it turns critical);
* again only when its severity changes (``escalated``), when it closes (``closed``:
  the watermark passed its last window by the cool-down, so no later window can
  join it), and if it fires again after that (``reopened``).

Updates are marked as updates of the first message: the same title; for PagerDuty
the alert id is the ``dedup_key`` (the incident updates, then resolves); for e-mail
every message carries ``References: <alert-id@moodwire>`` and updates
``In-Reply-To`` it (apprise makes each Message-ID itself, so the thread hangs on
that shared reference and the stable subject); the generic webhook's JSON says
``"notification": {"event": …, "update": true, "thread": <alert id>}``.

What was told is claimed in the store (``alert_notifications``) before it is sent,
so a restarted worker, or a second one, does not send it again. Delivery is each
destination's own background thread, with a bounded queue and retries with backoff
(tenacity): a slow or dead destination costs the scoring path nothing and delays no
other destination. A message given up on is counted per destination *kind*
(``moodwire_notifications_failed_total{kind="slack"}``) and logged with the
destination's name, never its URL.

>>> alert = {"id": "al-1", "kind": "negative_surge", "scope": "entity", "entity": "ACME",
...          "topic": None, "severity": "critical", "statistic": 7.1, "value": 0.62,
...          "baseline": 0.18, "n": 40, "window_start": "2026-12-02T03:00:00+00:00",
...          "window_end": "2026-12-02T03:15:00+00:00", "revision": 2, "evidence": {}}
>>> m = Message(alert, "escalated", title_for(alert), previous_severity="warning",
...             link="https://mw.example/alerts?alert=al-1")
>>> m.title
'Moodwire alert: negative surge on ACME [al-1]'
>>> print(m.summary())
Update (severity warning → critical): CRITICAL negative surge on ACME, z=+7.10, value 0.62 against 0.18, n=40
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from prometheus_client import Counter
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from state.store import Store
from stream.destinations import Destination, alert_link, apprise_log, redact
from stream.webhook import DeliveryError, post

log = structlog.get_logger(__name__)

EVENTS = ("opened", "escalated", "reopened", "closed")

SENT = Counter(
    "moodwire_notifications_sent_total",
    "Alert notifications a destination accepted",
    ["kind", "event"],
)
FAILED = Counter(
    "moodwire_notifications_failed_total",
    "Alert notifications given up on after every retry, per destination kind",
    ["kind"],
)
DROPPED = Counter(
    "moodwire_notifications_dropped_total",
    "Alert notifications dropped because the destination's queue was full",
    ["kind"],
)


def title_for(alert: dict[str, Any]) -> str:
    """The title every message of the episode carries (taken when it opens)."""
    return f"Moodwire alert: {_what(alert)} [{alert['id']}]"


def _what(alert: dict[str, Any]) -> str:
    kind = str(alert.get("kind", "alert")).replace("_", " ")
    if alert.get("entity"):
        return f"{kind} on {alert['entity']}"
    if alert.get("topic"):
        return f"{kind} on topic {alert['topic']}"
    return f"{kind} on the stream"


def _when(iso: str | None) -> str:
    if not iso:
        return "?"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(iso)


@dataclass(frozen=True)
class Message:
    """One notification: the alert as it is now, and what happened to its episode."""

    alert: dict[str, Any]
    event: str  # one of EVENTS
    title: str
    previous_severity: str | None = None
    link: str | None = None

    @property
    def update(self) -> bool:
        return self.event != "opened"

    def _prefix(self) -> str:
        if self.event == "escalated":
            return f"Update (severity {self.previous_severity} → {self.alert['severity']}): "
        if self.event == "reopened":
            return "Update (fired again after it closed): "
        if self.event == "closed":
            return "Resolved: "
        return ""

    def summary(self) -> str:
        """One line (PagerDuty's summary, a chat preview)."""
        a = self.alert
        line = f"{self._prefix()}{a['severity'].upper()} {_what(a)}"
        if a.get("statistic") is not None:
            line += f", z={float(a['statistic']):+.2f}"
        if a.get("value") is not None and a.get("baseline") is not None:
            line += f", value {float(a['value']):.3g} against {float(a['baseline']):.3g}"
        if a.get("n") is not None:
            line += f", n={a['n']}"
        return line[:1000]

    def body(self) -> str:
        """The message in Markdown: the summary, the window, the worst items, the link."""
        a = self.alert
        lines = [self.summary()]
        if self.event == "closed":
            lines.append(f"No firing since {_when(a.get('window_end'))}: the episode is closed.")
        lines.append(f"Window {_when(a.get('window_start'))} → {_when(a.get('window_end'))}.")
        top = (a.get("evidence") or {}).get("top") or []
        if top and self.event != "closed":
            lines.append("Most negative items:")
            for t in top[:3]:
                text = " ".join(str(t.get("text", "")).split())[:160]
                lines.append(f"- {text} ({t.get('label')}, {float(t.get('score', 0.0)):+.2f})")
        if self.link:
            lines.append(f"Open in the dashboard: {self.link}")
        lines.append(f"Alert {a['id']}, revision {a.get('revision')}.")
        return "\n".join(lines)

    def webhook_json(self, destination: str) -> bytes:
        """The generic webhook's body: the alert, as before, plus what this message is."""
        data = dict(self.alert)
        data["notification"] = {
            "event": self.event,
            "update": self.update,
            "thread": self.alert["id"],
            "title": self.title,
            "summary": self.summary(),
            "previous_severity": self.previous_severity,
            "dashboard_url": self.link,
            "destination": destination,
        }
        return json.dumps(data, default=str).encode("utf-8")


class Sender(Protocol):
    """Sends one message to one destination; raises :class:`DeliveryError` when it cannot."""

    def send(self, message: Message) -> None: ...


class WebhookSender:
    """The generic webhook: the alert's JSON, signed when there is a secret."""

    def __init__(self, destination: Destination, secret: bytes | None) -> None:
        self.destination = destination
        self.secret = secret

    def send(self, message: Message) -> None:
        post(
            self.destination.url.get_secret_value(),
            message.webhook_json(self.destination.key),
            secret=self.secret,
            timeout_s=self.destination.timeout_s,
        )


class AppriseSender:
    """Slack, Teams, PagerDuty, e-mail, … through apprise, one URL per message.

    The destination's URL gets what marks the message: for PagerDuty ``dedup`` (the
    alert id), ``action`` (``trigger``, or ``resolve`` when the episode closed) and
    ``click`` (the dashboard link); for e-mail the threading headers.
    """

    def __init__(self, destination: Destination) -> None:
        self.destination = destination

    def url_for(self, message: Message) -> str:
        d = self.destination
        extra: dict[str, str] = {}
        alert_id = message.alert["id"]
        if d.kind == "pagerduty":
            extra["dedup"] = alert_id
            extra["action"] = "resolve" if message.event == "closed" else "trigger"
            if message.link:
                extra["click"] = message.link
        elif d.kind == "email":
            thread = f"<{alert_id}@moodwire>"
            extra["+References"] = thread
            extra["+X-Moodwire-Alert"] = alert_id
            if message.update:
                extra["+In-Reply-To"] = thread
        return _with_query(
            d.url.get_secret_value(), extra, {"cto": d.timeout_s, "rto": d.timeout_s}
        )

    def send(self, message: Message) -> None:
        import apprise

        url = self.url_for(message)
        if message.event == "closed":
            kind = apprise.NotifyType.SUCCESS
        elif message.alert["severity"] == "critical":
            kind = apprise.NotifyType.FAILURE
        else:
            kind = apprise.NotifyType.WARNING
        short = self.destination.kind == "pagerduty"  # the body is the incident's summary
        with apprise_log() as said:
            try:
                asset = apprise.AppriseAsset(app_id="Moodwire", app_desc="Moodwire alerts")
                plugin = apprise.Apprise.instantiate(url, asset=asset)
                ok = plugin is not None and plugin.notify(
                    body=message.summary() if short else message.body(),
                    title=message.title,
                    notify_type=kind,
                    body_format=apprise.NotifyFormat.TEXT
                    if short
                    else apprise.NotifyFormat.MARKDOWN,
                )
            except Exception as exc:  # a plugin's own failure: a delivery failure
                said.append(type(exc).__name__)
                ok = False
        if not ok:
            reason = "; ".join(said[-2:]) or "apprise reported a failure"
            raise DeliveryError(redact(reason, url)[:300])


def _with_query(url: str, extra: dict[str, str], defaults: dict[str, Any]) -> str:
    split = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(split.query, keep_blank_values=True) if k not in extra]
    have = {k for k, _ in query}
    query += [(k, str(v)) for k, v in defaults.items() if k not in have]
    query += list(extra.items())
    return urlunsplit(split._replace(query=urlencode(query)))


def sender_for(destination: Destination, *, webhook_secret: bytes | None = None) -> Sender:
    if destination.kind == "webhook":
        return WebhookSender(destination, webhook_secret)
    return AppriseSender(destination)


@dataclass(frozen=True)
class _Tick:
    watermark: float | None
    now: float


class Channel:
    """One destination: what to tell it (claimed in the store), a queue, a thread, retries."""

    def __init__(
        self,
        destination: Destination,
        sender: Sender,
        store: Store,
        *,
        dashboard_url: str | None = None,
        window_s: float = 900.0,
        cooldown_s: float = 3600.0,
        queue_size: int = 1000,
        backoff_s: float = 0.5,
    ) -> None:
        self.destination = destination
        self.sender = sender
        self.store = store
        self.dashboard_url = dashboard_url
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.backoff_s = backoff_s
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | _Tick | None] = queue.Queue(maxsize=queue_size)
        self._abandon = threading.Event()  # closing took too long: stop retrying
        self._thread = threading.Thread(
            target=self._run, name=f"moodwire-notify-{destination.key}", daemon=True
        )
        self._thread.start()

    @property
    def kind(self) -> str:
        return self.destination.kind

    # -- the caller's side (never blocks) -----------------------------------------------------

    def offer(self, alert: dict[str, Any]) -> bool:
        """Queue a new or revised alert; False (counted, logged) when the queue is full."""
        try:
            self._queue.put_nowait(alert)
            return True
        except queue.Full:
            self.dropped += 1
            DROPPED.labels(self.kind).inc()
            log.error(
                "notification_queue_full_dropped",
                alert_id=alert.get("id"),
                destination=self.destination.key,
                kind=self.kind,
            )
            return False

    def offer_tick(self, watermark: float | None, now: float) -> None:
        """Queue a look for episodes that closed (skipped when the queue is busy)."""
        with contextlib.suppress(queue.Full):  # the next tick looks again
            self._queue.put_nowait(_Tick(watermark, now))

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout_s``), then stop."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon.set()
            log.error(
                "notification_close_timed_out_undelivered",
                destination=self.destination.key,
                kind=self.kind,
                queued=self._queue.qsize(),
            )

    # -- the thread ---------------------------------------------------------------------------

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far was handled; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.01)
        return True

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None or self._abandon.is_set():
                    return
                if isinstance(job, _Tick):
                    self._closures(job)
                else:
                    self._revision(job)
            except Exception as exc:  # the store away, a bug: logged, the thread goes on
                log.error(
                    "notification_error",
                    destination=self.destination.key,
                    kind=self.kind,
                    error=type(exc).__name__,
                )
            finally:
                self._queue.task_done()

    def _revision(self, alert: dict[str, Any]) -> None:
        d, store = self.destination, self.store
        aid, severity, revision = alert["id"], alert["severity"], int(alert["revision"])
        row = store.notification(aid, d.key)
        wanted = d.admits(severity) and not store.alert_muted(aid)
        if row is None:
            if wanted and store.open_notification(
                aid,
                d.key,
                kind=d.kind,
                severity=severity,
                revision=revision,
                title=title_for(alert),
            ):
                self._deliver(Message(alert, "opened", title_for(alert), link=self._link(aid)))
            return
        title, before = row["title"], row["severity"]
        if row["state"] == "closed":
            # Only a newer revision reopens a closed episode: one already told of (a late
            # notify of it, or a restarted worker's recomputation) says nothing new.
            if wanted and revision > row["revision"] and store.advance_notification(
                aid, d.key, expect_state="closed", expect_severity=before,
                state="open", severity=severity, revision=revision,
            ):  # fmt: skip
                self._deliver(Message(alert, "reopened", title, before, self._link(aid)))
            return
        if wanted and severity != before:
            if store.advance_notification(
                aid, d.key, expect_state="open", expect_severity=before,
                state="open", severity=severity, revision=revision,
            ):  # fmt: skip
                self._deliver(Message(alert, "escalated", title, before, self._link(aid)))
            return
        # Nothing new to say (same severity, or muted): remember the revision, send nothing.
        store.advance_notification(
            aid, d.key, expect_state="open", expect_severity=before,
            state="open", severity=before, revision=revision, message=False,
        )  # fmt: skip

    def _closures(self, tick: _Tick) -> None:
        for row in self.store.open_notifications(self.destination.key):
            alert = dict(row["payload"])
            end = row["window_end"].timestamp()
            if alert.get("kind") == "drift":  # drift events are stamped in wall time
                closed = tick.now >= end + self.cooldown_s
            else:  # every window that could still join the episode has been judged
                closed = tick.watermark is not None and (
                    tick.watermark >= end + self.cooldown_s + self.window_s
                )
            if closed and self.store.advance_notification(
                alert["id"], self.destination.key, expect_state="open",
                expect_severity=row["severity"], state="closed",
                severity=row["severity"], revision=int(row["revision"]),
            ):  # fmt: skip
                self._deliver(Message(alert, "closed", row["title"], link=self._link(alert["id"])))

    def _link(self, alert_id: str) -> str | None:
        return alert_link(self.dashboard_url, alert_id)

    def _deliver(self, message: Message) -> bool:
        d = self.destination
        attempts = 0

        def once() -> None:
            nonlocal attempts
            attempts += 1
            self.sender.send(message)

        try:
            Retrying(
                stop=stop_after_attempt(d.retries + 1) | stop_when_event_set(self._abandon),
                wait=wait_exponential(multiplier=self.backoff_s, max=30),
                retry=retry_if_exception_type(DeliveryError),
                sleep=self._abandon.wait,  # closing cuts a backoff short
                reraise=True,
            )(once)
        except DeliveryError as exc:
            self.failed += 1
            FAILED.labels(d.kind).inc()
            log.error(
                "notification_failed",
                destination=d.key,
                kind=d.kind,
                alert_id=message.alert["id"],
                notification=message.event,
                error=str(exc),
                attempts=attempts,
            )
            self.store.record_delivery(message.alert["id"], d.key, str(exc))
            return False
        self.sent += 1
        SENT.labels(d.kind, message.event).inc()
        log.info(
            "notification_sent",
            destination=d.key,
            kind=d.kind,
            alert_id=message.alert["id"],
            notification=message.event,
            severity=message.alert["severity"],
            attempts=attempts,
        )
        self.store.record_delivery(message.alert["id"], d.key, None)
        return True


class Notifier:
    """Every destination's :class:`Channel`; what the alerter calls (never blocks)."""

    def __init__(self, channels: Sequence[Channel], *, check_every_s: float = 15.0) -> None:
        self.channels = list(channels)
        self.check_every_s = check_every_s
        self._last_check = float("-inf")

    @classmethod
    def build(
        cls,
        destinations: Iterable[Destination],
        store: Store,
        *,
        webhook_secret: bytes | None = None,
        dashboard_url: str | None = None,
        window_s: float = 900.0,
        cooldown_s: float = 3600.0,
        queue_size: int = 1000,
        backoff_s: float = 0.5,
        check_every_s: float = 15.0,
        make_sender: Callable[[Destination], Sender] | None = None,
    ) -> Notifier:
        channels = []
        for d in destinations:
            sender = make_sender(d) if make_sender else sender_for(d, webhook_secret=webhook_secret)
            if d.kind == "webhook" and not webhook_secret:
                log.warning(
                    "webhook_unsigned", destination=d.key, hint="set MOODWIRE_WEBHOOK_SECRET"
                )
            channels.append(
                Channel(
                    d,
                    sender,
                    store,
                    dashboard_url=dashboard_url,
                    window_s=window_s,
                    cooldown_s=cooldown_s,
                    queue_size=queue_size,
                    backoff_s=backoff_s,
                )  # fmt: skip
            )
        return cls(channels, check_every_s=check_every_s)

    def notify(self, alert: dict[str, Any]) -> None:
        """A new or revised alert this worker stored first."""
        for channel in self.channels:
            channel.offer(alert)

    def tick(
        self, watermark: float | None, *, now: float | None = None, force: bool = False
    ) -> None:
        """Look for episodes that closed (at most every ``check_every_s``)."""
        mono = time.monotonic()
        if not force and mono - self._last_check < self.check_every_s:
            return
        self._last_check = mono
        for channel in self.channels:
            channel.offer_tick(watermark, time.time() if now is None else now)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every channel handled what was queued so far; False on timeout."""
        deadline = time.monotonic() + timeout_s
        return all(c.wait_idle(max(0.0, deadline - time.monotonic())) for c in self.channels)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout_s`` in all), then stop every channel."""
        deadline = time.monotonic() + timeout_s
        for channel in self.channels:
            channel.close(max(0.1, deadline - time.monotonic()))
