"""Turn raw Kafka values into valid items, or into a rejection with a reason.

Errors are data: :func:`validate` never raises on bad input, it returns a
:class:`Rejected` that the worker sends to the dead-letter topic.

>>> limits = Limits(max_message_bytes=1000, max_text_chars=100, max_entities=4)
>>> validate(b'{"text": "ACME beats estimates"}', kafka_ts_ms=0, limits=limits).item.text
'ACME beats estimates'
>>> validate(b'{"text": ""}', kafka_ts_ms=0, limits=limits).reason
'empty_text'
>>> validate(b'\\xff\\xfe', kafka_ts_ms=0, limits=limits).reason
'invalid_utf8'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from stream.schemas import NewsItem

REASONS = (
    "oversized",
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "schema",
    "empty_text",
    "text_too_long",
    "too_many_entities",
)


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_text_chars: int
    max_entities: int


@dataclass(frozen=True)
class Accepted:
    item: NewsItem  # with ``ts`` resolved (the Kafka timestamp when the item had none)
    id: str


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def validate(raw: bytes | None, *, kafka_ts_ms: int | None, limits: Limits) -> Accepted | Rejected:
    """Validate one raw message value."""
    if raw is None:
        return Rejected("malformed_json", "message has no value (tombstone)")
    if len(raw) > limits.max_message_bytes:
        return Rejected(
            "oversized", f"{len(raw)} bytes > max_message_bytes={limits.max_message_bytes}"
        )
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("invalid_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        payload = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return Rejected("malformed_json", f"line {exc.lineno} col {exc.colno}: {exc.msg}")
    if not isinstance(payload, dict):
        return Rejected("not_an_object", f"expected a JSON object, got {type(payload).__name__}")
    try:
        item = NewsItem.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "item"
        return Rejected("schema", f"{where}: {first['msg']} ({exc.error_count()} error(s))")
    if not item.text.strip():
        return Rejected("empty_text", "text is empty or whitespace")
    if len(item.text) > limits.max_text_chars:
        return Rejected(
            "text_too_long", f"{len(item.text)} chars > max_text_chars={limits.max_text_chars}"
        )
    if len(item.entities) > limits.max_entities:
        return Rejected(
            "too_many_entities", f"{len(item.entities)} > max_entities={limits.max_entities}"
        )
    if item.ts is None:
        ts = (
            datetime.fromtimestamp(kafka_ts_ms / 1000.0, tz=UTC)
            if kafka_ts_ms is not None and kafka_ts_ms >= 0
            else datetime.now(UTC)
        )
        item = item.model_copy(update={"ts": ts})
    return Accepted(item=item, id=item.resolved_id())
