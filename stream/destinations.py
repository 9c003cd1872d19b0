"""Where alerts go: destinations, each a URL (a secret: URLs carry tokens) and a threshold.

A destination's URL says what it is. ``http://`` and ``https://`` are the generic
webhook (the alert as JSON, signed; see :mod:`stream.webhook`); everything else
is an `apprise <https://appriseit.com>`_ URL:

=============  =====================================================================
kind           URL
=============  =====================================================================
``slack``      ``slack://TOKEN_A/TOKEN_B/TOKEN_C`` (an incoming webhook) or
               ``slack://xoxb-…/#channel`` (a bot)
``teams``      ``workflow://HOST:PORT/WORKFLOW/SIGNATURE`` (a Teams Workflow / Power
               Automate webhook; Microsoft retired the old Office 365 connectors)
``pagerduty``  ``pagerduty://INTEGRATION_KEY@API_KEY/SOURCE``
``email``      ``mailto://USER:PASSWORD@DOMAIN?smtp=HOST&to=ADDRESS`` (``mailtos://``: TLS)
``json``       ``json://HOST:PORT/PATH`` (apprise's own JSON post)
=============  =====================================================================

Any other apprise URL works too (its kind is its scheme). ``min_severity`` is the
least severity the destination hears of (alerts are ``warning`` or ``critical``).

>>> d = parse_destinations(
...     '[{"url": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7", "min_severity": "critical"}]'
... )
>>> d[0].kind, d[0].min_severity, d[0].admits("warning"), d[0].admits("critical")
('slack', 'critical', False, True)
>>> "TIiajkdnlazkcOXrIdevi7" in repr(d)
False
>>> parse_destinations('[{"url": "json://127.0.0.1:9/x", "min_severity": "loud"}]')
Traceback (most recent call last):
...
ValueError: MOODWIRE_NOTIFY destination 0: min_severity: must be one of 'warning', 'critical' (got 'loud')
>>> alert_link("https://moodwire.example.com/", "al-0123")
'https://moodwire.example.com/alerts?alert=al-0123'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

# The severities alerts have (stream/alerts.py), least first.
SEVERITIES = ("warning", "critical")

# URL scheme -> destination kind (the label of every metric: never the URL).
SCHEME_KINDS = {
    "http": "webhook",
    "https": "webhook",
    "slack": "slack",
    "workflow": "teams",
    "workflows": "teams",
    "pagerduty": "pagerduty",
    "mailto": "email",
    "mailtos": "email",
    "json": "json",
    "jsons": "json",
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_FIELDS = ("url", "min_severity", "name", "retries", "timeout_s")


def severity_rank(severity: str) -> int:
    """0 for ``warning``, 1 for ``critical``; an unknown severity counts as the highest."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


class Destination(BaseModel):
    """One place alerts go (the URL is a secret: it is never logged, shown or stored)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: SecretStr
    min_severity: str = "warning"
    # Names the destination in logs and in the store (default: its kind and a hash of the URL).
    name: str | None = None
    retries: int = Field(3, ge=0, le=20)
    timeout_s: float = Field(5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _usable_url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value().strip()
        if not url:
            raise ValueError("is empty")
        scheme = scheme_of(url)
        if not scheme:
            raise ValueError("has no scheme (expected e.g. slack://…, mailto://…, https://…)")
        if scheme in ("http", "https"):
            if not urlsplit(url).hostname:
                raise ValueError(f"{scheme}:// URL has no host")
        elif not apprise_accepts(url):
            raise ValueError(
                f"apprise cannot use this {scheme}:// URL (unknown scheme, or a token missing "
                "or malformed: see https://appriseit.com/services/)"
            )
        return SecretStr(url)

    @field_validator("min_severity")
    @classmethod
    def _known_severity(cls, v: str) -> str:
        if v not in SEVERITIES:
            allowed = ", ".join(repr(s) for s in SEVERITIES)
            raise ValueError(f"must be one of {allowed} (got {v[:20]!r})")
        return v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError("must be 1-64 letters, digits, '_', '.' or '-'")
        return v

    @property
    def kind(self) -> str:
        scheme = scheme_of(self.url.get_secret_value())
        return SCHEME_KINDS.get(scheme, scheme)

    @property
    def key(self) -> str:
        """How the store and the logs name it: its name, or its kind and a hash of its URL."""
        if self.name:
            return self.name
        digest = hashlib.sha256(self.url.get_secret_value().encode()).hexdigest()[:12]
        return f"{self.kind}-{digest}"

    def admits(self, severity: str) -> bool:
        """Whether an alert of ``severity`` reaches this destination."""
        return severity_rank(severity) >= severity_rank(self.min_severity)


def parse_destinations(
    text: str | None, *, source: str = "MOODWIRE_NOTIFY"
) -> tuple[Destination, ...]:
    """Destinations from JSON: a list of ``{"url": …, "min_severity": …}`` (or one object).

    Errors say which entry and which field, and never repeat a URL.
    """
    if text is None or not text.strip():
        return ()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            'expected a list such as [{"url": "slack://…", "min_severity": "critical"}]'
        ) from None
    return destinations_from(data, source=source)


def destinations_from(data: Any, *, source: str = "MOODWIRE_NOTIFY") -> tuple[Destination, ...]:
    """Destinations from decoded data (a list of mappings, one mapping, or Destinations)."""
    if isinstance(data, dict | Destination):
        data = [data]
    if not isinstance(data, list | tuple):
        raise ValueError(
            f"{source} must be a JSON list of destinations, got a {type(data).__name__}"
        )
    out = []
    for i, entry in enumerate(data):
        if isinstance(entry, Destination):
            out.append(entry)
            continue
        if not isinstance(entry, dict):
            raise ValueError(
                f"{source} destination {i}: must be an object with a url, got a "
                f"{type(entry).__name__}"
            )
        unknown = sorted(str(k) for k in entry if k not in _FIELDS)
        if unknown:
            raise ValueError(
                f"{source} destination {i}: unknown field(s) {', '.join(unknown)[:80]} "
                f"(known: {', '.join(_FIELDS)})"
            )
        if "url" not in entry:
            raise ValueError(f"{source} destination {i}: url is missing")
        if not isinstance(entry["url"], str | SecretStr):
            raise ValueError(f"{source} destination {i}: url must be a string")
        try:
            out.append(Destination.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            message = first["msg"].removeprefix("Value error, ")
            raise ValueError(f"{source} destination {i}: {where}: {message}") from None
    keys = [d.key for d in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{source}: two destinations have the same name or URL")
    return tuple(out)


def alert_link(dashboard_url: str | None, alert_id: str) -> str | None:
    """The alert's own page on the dashboard (None without a public dashboard address)."""
    if not dashboard_url:
        return None
    return f"{dashboard_url.rstrip('/')}/alerts?alert={quote(alert_id, safe='')}"


# -- apprise, with its log kept to ourselves (its messages can carry tokens) ---------------

_captured = threading.local()


class _Capture(logging.Handler):
    """Keeps apprise's log records for the thread that asked, and lets none through."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = getattr(_captured, "records", None)
        if sink is not None and record.levelno >= logging.WARNING:
            sink.append(record.getMessage())


_apprise_logger = logging.getLogger("apprise")
_apprise_logger.propagate = False  # never to the root logger's stderr: messages name tokens
if not any(isinstance(h, _Capture) for h in _apprise_logger.handlers):
    _apprise_logger.addHandler(_Capture())


@contextlib.contextmanager
def apprise_log() -> Iterator[list[str]]:
    """Apprise's warnings in this thread, for the caller to redact and report."""
    previous = getattr(_captured, "records", None)
    _captured.records = records = []
    try:
        yield records
    finally:
        _captured.records = previous


def apprise_accepts(url: str) -> bool:
    """Whether apprise can build a notifier from ``url`` (it sends nothing)."""
    import apprise

    with apprise_log():
        return apprise.Apprise.instantiate(url) is not None


def redact(text: str, url: str) -> str:
    """``text`` without ``url`` or any part of it that could be a secret.

    >>> redact("POST to hooks/T1/B2/abcdef failed", "slack://T1/B2/abcdef")
    'POST to hooks/***/***/*** failed'
    """
    parts = {url}
    split = urlsplit(url)
    parts.update(p for p in re.split(r"[/:@]", split.netloc + split.path) if p)
    for pair in split.query.split("&"):
        _, _, value = pair.partition("=")
        if value:
            parts.update({value, unquote(value)})
    for part in sorted(parts, key=len, reverse=True):
        if len(part) >= 2:
            text = text.replace(part, "***")
    return text
