"""The generic webhook: the alert as JSON, POSTed, signed with HMAC-SHA256.

With a secret (``MOODWIRE_WEBHOOK_SECRET``) every request carries two headers:

* ``X-Moodwire-Timestamp``: the Unix time of the request, in seconds;
* ``X-Moodwire-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the
  secret, of ``<timestamp>.`` followed by the exact body bytes.

A receiver recomputes the MAC over the raw body it received (before parsing it),
compares it in constant time, and refuses a timestamp too far from its clock (a
replayed request), e.g. in Python::

    ts = request.headers["X-Moodwire-Timestamp"]
    mac = hmac.new(secret, ts.encode() + b"." + raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(request.headers["X-Moodwire-Signature"], "sha256=" + mac)
    fresh = abs(time.time() - int(ts)) <= 300

Each retry is signed anew (a new timestamp). Delivery (queue, thread, retries) is
:mod:`stream.notify`'s; this module sends one request.

>>> headers = signature_headers(b'{"id": "al-1"}', b"s3cret", timestamp=1700000000)
>>> headers["X-Moodwire-Timestamp"], headers["X-Moodwire-Signature"][:15]
('1700000000', 'sha256=9491940b')
>>> verify_signature(b'{"id": "al-1"}', b"s3cret", headers, now=1700000100)
True
>>> verify_signature(b'{"id": "al-2"}', b"s3cret", headers, now=1700000100)
False
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Moodwire-Signature"
TIMESTAMP_HEADER = "X-Moodwire-Timestamp"
DEFAULT_TOLERANCE_S = 300


class DeliveryError(Exception):
    """A destination did not take a message (the text names no URL or secret)."""


def signature(body: bytes, secret: bytes, timestamp: int) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>`` keyed with ``secret``."""
    mac = hmac.new(secret, str(int(timestamp)).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signature_headers(
    body: bytes, secret: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The two headers that sign ``body`` now (or at ``timestamp``)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: signature(body, secret, ts)}


def verify_signature(
    body: bytes,
    secret: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """What a receiver does: the MAC matches (constant time) and the timestamp is fresh."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ts, sig = lowered.get(TIMESTAMP_HEADER.lower()), lowered.get(SIGNATURE_HEADER.lower())
    if ts is None or sig is None or not ts.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(ts)) > tolerance_s:
        return False
    return hmac.compare_digest(sig, signature(body, secret, int(ts)))


def validate_webhook_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("webhook URL must start with http:// or https://")
    return url


def post(url: str, body: bytes, *, secret: bytes | None, timeout_s: float) -> None:
    """POST ``body`` (JSON) to ``url``, signed when there is a secret; raises DeliveryError."""
    headers = {"Content-Type": "application/json", "User-Agent": "moodwire"}
    if secret:
        headers.update(signature_headers(body, secret))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if not 200 <= response.status < 300:
                raise DeliveryError(f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:  # refused, timed out, unreachable, …
        # The kind of failure only: an exception's text may repeat the URL.
        reason = getattr(exc, "reason", exc)
        if not isinstance(reason, BaseException):
            reason = exc
        detail = getattr(reason, "strerror", None)
        raise DeliveryError(type(reason).__name__ + (f": {detail}" if detail else "")) from None
