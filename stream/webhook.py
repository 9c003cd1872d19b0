"""Alerts to a webhook: JSON POST from a background thread, retried, never blocking.

``send`` only puts the alert on a bounded queue and returns; a daemon thread
posts it with a timeout and retries with exponential backoff. A dead endpoint
costs the scoring path nothing: failures are logged, and when the queue is
full the newest alert is dropped (and counted) rather than waiting.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import structlog
from prometheus_client import Counter

log = structlog.get_logger(__name__)

SENT = Counter("moodwire_webhook_sent_total", "Alerts the webhook accepted")
FAILED = Counter("moodwire_webhook_failed_total", "Alerts given up on after every retry")
DROPPED = Counter("moodwire_webhook_dropped_total", "Alerts dropped because the queue was full")


class WebhookSink:
    """POST each alert as JSON to ``url`` (``send`` returns at once, whatever the endpoint does)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        queue_size: int = 1000,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._abandon = threading.Event()  # closing took too long: drop the rest
        self._thread = threading.Thread(target=self._run, name="moodwire-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: dict[str, Any]) -> bool:
        """Queue an alert; False (and logged) when the queue is full."""
        try:
            self._queue.put_nowait(alert)
            return True
        except queue.Full:
            self.dropped += 1
            DROPPED.inc()
            log.error("webhook_queue_full_alert_dropped", alert_id=alert.get("id"), url=self.url)
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout_s``), then stop."""
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandon.set()
            log.error(
                "webhook_close_timed_out_undelivered", queued=self._queue.qsize(), url=self.url
            )

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None or self._abandon.is_set():
                return
            self._deliver(alert)

    def _deliver(self, alert: dict[str, Any]) -> None:
        body = json.dumps(alert, default=str).encode("utf-8")
        error = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=self.headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if 200 <= response.status < 300:
                        self.sent += 1
                        SENT.inc()
                        return
                    error = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:  # refused, timed out, unreachable, …
                error = f"{type(exc).__name__}: {exc}"[:200]
            if self._abandon.is_set():
                break
            if attempt < self.retries and not self._closing.is_set():
                time.sleep(self.backoff_s * 2**attempt)
        self.failed += 1
        FAILED.inc()
        log.error(
            "webhook_failed",
            alert_id=alert.get("id"),
            url=self.url,
            error=error,
            attempts=self.retries + 1,
        )
