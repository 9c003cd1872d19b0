"""Who sent a label or a command: the origin field and its HMAC-SHA256 signature.

Anyone who can write ``news.labels`` could otherwise train the model, and
anyone who can write ``moodwire.control`` could ask for a retrain or a switch.
So every label and control message names its ``origin`` (``"dashboard"``,
``"cli"``, ``"worker"``, ``"learner"``, ``"labeller:acme"``…) and carries a
``signature``: HMAC-SHA256, keyed with that origin's own secret, over the
message's canonical form (the JSON object without its ``signature`` member,
keys sorted, no spaces, non-ASCII as ``\\uXXXX`` escapes: what Python's
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``
writes), as 64 lower-case hex digits. Every field is covered, ``origin`` and
``ts`` included; a field added, removed or changed breaks it.

A sender holds only its own key (:class:`Signer`); the learner holds the keys
of the origins it trusts, and accepts a message only from an allowed origin
with a valid signature (:class:`Trust`), and a command only when its ``ts`` is
within the replay window. Anything else is a :class:`Refused` with a reason
code, never another exception.

>>> from pydantic import SecretStr
>>> signer = Signer("labeller:acme", SecretStr("k3y"))
>>> raw = signer.sign_json({"item_id": "it-1", "label": "positive"})
>>> trust = Trust({"labeller:acme": SecretStr("k3y")}, allowed=frozenset({"labeller:acme"}))
>>> verified = trust.verify(raw)
>>> verified.origin, verified.payload["label"]
('labeller:acme', 'positive')
>>> trust.verify(raw.replace(b"positive", b"negative"))
Traceback (most recent call last):
...
stream.origins.Refused: bad_signature: the signature of 'labeller:acme' does not match
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, SecretStr

from stream.schemas import parse_ts
from stream.validate import decode_json

ORIGIN = "origin"
SIGNATURE = "signature"
MAX_ORIGIN_CHARS = 64  # the schemas' Short field
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ORIGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._@/-]*")

# Why a message was refused (the ``reason`` label of the refusal counter).
REASONS = (
    "malformed",  # not a JSON object
    "unsigned",  # no origin or no signature
    "origin_not_allowed",  # an origin this consumer does not take this kind of message from
    "unknown_origin",  # allowed, but no key is configured for it
    "bad_signature",  # the signature does not match the message
    "stale",  # a command whose ts is outside the replay window (or has none)
    "replayed",  # a command already taken, sent again (the consumer keeps what it took)
    "action_not_allowed",  # a verified origin asking for what it may not (a worker's retrain)
)


class Refused(ValueError):
    """A message refused for who sent it: ``reason`` is one of :data:`REASONS`.

    ``origin`` is the origin the message *claims* (unverified; None when it names none).
    """

    def __init__(self, reason: str, detail: str, origin: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.origin = origin


def canonical(payload: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: ``payload`` without its signature, in canonical JSON.

    >>> canonical({"b": 1, "a": "é", "signature": "ff"})
    b'{"a":"\\\\u00e9","b":1}'
    """
    body = {k: v for k, v in payload.items() if k != SIGNATURE}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def signature(key: SecretStr, payload: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of :func:`canonical` ``(payload)`` under ``key``, as hex."""
    secret = key.get_secret_value().encode("utf-8")
    return hmac.new(secret, canonical(payload), hashlib.sha256).hexdigest()


def valid_origin_name(name: str) -> bool:
    """Whether ``name`` can name an origin: short, printable, no spaces.

    >>> valid_origin_name("labeller:acme"), valid_origin_name("bad name"), valid_origin_name("")
    (True, False, False)
    """
    return len(name) <= MAX_ORIGIN_CHARS and _ORIGIN_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Signer:
    """A sender's own origin and key: signs what it sends.

    >>> s = Signer("cli", SecretStr("k"))
    >>> s
    Signer(origin='cli', key=SecretStr('**********'))
    >>> sorted(s.sign({"action": "retrain"}))
    ['action', 'origin', 'signature']
    """

    origin: str
    key: SecretStr

    def __post_init__(self) -> None:
        if not valid_origin_name(self.origin):
            raise ValueError(f"origin {self.origin[:40]!r} is not a valid origin name")
        if not self.key.get_secret_value():
            raise ValueError(f"the key of origin {self.origin!r} is empty")

    def sign(self, payload: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """``payload`` (a JSON object, or a model dumped as JSON) with origin and signature."""
        if isinstance(payload, BaseModel):
            body = json.loads(payload.model_dump_json())
        else:
            # What the receiver will parse: the JSON form (datetimes as ISO strings).
            body = json.loads(json.dumps(dict(payload), default=_json_default))
        body.pop(SIGNATURE, None)
        body[ORIGIN] = self.origin
        body[SIGNATURE] = signature(self.key, body)
        return body

    def sign_json(self, payload: Mapping[str, Any] | BaseModel) -> bytes:
        """:meth:`sign`, as the UTF-8 JSON value to send."""
        return json.dumps(self.sign(payload), ensure_ascii=True).encode("ascii")


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


@dataclass(frozen=True)
class Verified:
    """A message whose origin is allowed and whose signature is valid."""

    origin: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Trust:
    """What a consumer accepts: origins it takes a kind of message from, and their keys.

    ``max_age_s`` (commands) refuses a message whose signed ``ts`` is further
    than that from now, either way (a replayed old command, or a clock far off).
    """

    keys: Mapping[str, SecretStr]
    allowed: frozenset[str]
    max_age_s: float | None = None

    def verify(self, raw: bytes | None, *, now: datetime | None = None) -> Verified:
        """The verified message, or :class:`Refused` (and nothing else) saying why."""
        if raw is None:
            raise Refused("malformed", "message has no value (tombstone)")
        try:
            payload = decode_json(bytes(raw).decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise Refused("malformed", "not a UTF-8 JSON object") from None
        if not isinstance(payload, dict):
            raise Refused("malformed", f"expected a JSON object, got {type(payload).__name__}")
        return self.verify_payload(payload, now=now)

    def verify_payload(
        self, payload: Mapping[str, Any], *, now: datetime | None = None
    ) -> Verified:
        """:meth:`verify` on an already decoded JSON object."""
        origin, sig = payload.get(ORIGIN), payload.get(SIGNATURE)
        if not isinstance(origin, str) or not origin:
            raise Refused("unsigned", "the message names no origin")
        if not valid_origin_name(origin):
            raise Refused("unsigned", "the origin is not a valid origin name")
        if origin not in self.allowed:
            raise Refused("origin_not_allowed", f"origin {origin!r} is not allowed", origin)
        key = self.keys.get(origin)
        if key is None or not key.get_secret_value():
            raise Refused("unknown_origin", f"no key is configured for origin {origin!r}", origin)
        if sig is None:
            raise Refused("unsigned", f"the message from {origin!r} carries no signature", origin)
        try:
            expected = signature(key, payload)
        except (ValueError, TypeError, RecursionError):
            raise Refused("malformed", "the message has no canonical JSON form", origin) from None
        if not (isinstance(sig, str) and _HEX64.fullmatch(sig)) or not hmac.compare_digest(
            expected, sig
        ):
            raise Refused("bad_signature", f"the signature of {origin!r} does not match", origin)
        if self.max_age_s is not None:
            try:
                ts = parse_ts(payload.get("ts"))
            except ValueError:
                ts = None
            if ts is None:
                raise Refused("stale", "a command must carry its time (ts)", origin)
            age = ((now or datetime.now(UTC)) - ts).total_seconds()
            if abs(age) > self.max_age_s:
                raise Refused(
                    "stale",
                    f"sent {age:.0f} s ago, outside the {self.max_age_s:g} s replay window",
                    origin,
                )
        return Verified(origin, dict(payload))


@dataclass
class RefusalLog:
    """Says once per ``every_s`` per (kind, origin, reason) that messages were refused,
    with how many since it last said so: a flood of forgeries is not a flood of logs.

    ``emit(event, **fields)`` is the logger's method.

    >>> said = []
    >>> clock = iter([0.0, 1.0, 61.0]).__next__
    >>> log = RefusalLog(lambda event, **kw: said.append(kw["refused"]), clock=clock)
    >>> for _ in range(3):
    ...     log.refused("label", Refused("unsigned", "x", "someone"))
    >>> said
    [1, 2]
    """

    emit: Callable[..., Any]
    every_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _last: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _counts: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def refused(
        self, kind: str, refusal: Refused, *, origin: str | None = None, **context: Any
    ) -> None:
        """Count one refusal; say so if this (kind, origin, reason) was quiet for ``every_s``.

        ``origin`` is what to file it under (default: the origin it claims); a caller
        facing forged names passes a bounded one, so memory and logs stay bounded too.
        """
        name = origin if origin is not None else (refusal.origin or "")
        key = (kind, name[:MAX_ORIGIN_CHARS], refusal.reason)
        self._counts[key] = self._counts.get(key, 0) + 1
        now = self.clock()
        if key in self._last and now - self._last[key] < self.every_s:
            return
        self._last[key] = now
        self.emit(
            f"{kind}_refused",
            origin=key[1] or None,
            reason=refusal.reason,
            detail=refusal.detail,
            refused=self._counts.pop(key),
            **context,
        )
