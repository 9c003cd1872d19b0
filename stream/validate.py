"""Turn raw Kafka values into valid items, or into a rejection with a reason.

Errors are data: :func:`validate` never raises, whatever the bytes, it returns
a :class:`Rejected` that the worker sends to the dead-letter topic. What it
accepts is storable on SQLite and PostgreSQL and publishable as JSON (see
:class:`stream.schemas.NewsItem` for what is normalised and what refused).

>>> limits = Limits(max_message_bytes=1000, max_text_chars=100, max_entities=4)
>>> validate(b'{"text": "ACME beats estimates"}', kafka_ts_ms=0, limits=limits).item.text
'ACME beats estimates'
>>> validate(b'{"text": ""}', kafka_ts_ms=0, limits=limits).reason
'empty_text'
>>> validate(b'\\xff\\xfe', kafka_ts_ms=0, limits=limits).reason
'invalid_utf8'
>>> validate(b'{"text": "x", "ts": 1e308}', kafka_ts_ms=0, limits=limits).reason
'ts_out_of_range'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from stream.masking import Masker
from stream.schemas import TS_MAX, TS_MIN, NewsItem, storable_text

REASONS = (
    "oversized",
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "schema",
    "ts_out_of_range",
    "empty_text",
    "text_too_long",
    "too_many_entities",
    "unexpected",  # validation itself failed on this value: a bug, kept as data all the same
)


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_text_chars: int
    max_entities: int
    # Event times further ahead than this are refused: one item stamped in 2999 would
    # otherwise close every alert window of its partition at once.
    max_future_s: float = 86_400.0


@dataclass(frozen=True)
class Accepted:
    item: NewsItem  # with ``ts`` resolved (the Kafka timestamp when the item had none)
    id: str


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"number {text[:40]} does not fit in a double")
    return value


def decode_json(text: str) -> Any:
    """Strict JSON: no NaN/Infinity, no number that overflows a double.

    Raises ``ValueError`` (``json.JSONDecodeError`` included) or ``RecursionError``.

    >>> decode_json('{"a": 1}')
    {'a': 1}
    >>> decode_json('{"a": NaN}')
    Traceback (most recent call last):
    ...
    stream.validate._NotJson: NaN is not a JSON number
    """
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def kafka_time(ms: int | None) -> datetime | None:
    """A Kafka record timestamp as an aware datetime, or None when absent or absurd.

    Any producer can stamp any int64 on a record.

    >>> kafka_time(0).isoformat(), kafka_time(-1), kafka_time(2**63 - 1)
    ('1970-01-01T00:00:00+00:00', None, None)
    """
    if ms is None or isinstance(ms, bool) or ms < 0:
        return None
    try:
        ts = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return ts if TS_MIN <= ts < TS_MAX else None


def validate(
    raw: bytes | None,
    *,
    kafka_ts_ms: int | None,
    limits: Limits,
    now: datetime | None = None,
    mask: Masker | None = None,
) -> Accepted | Rejected:
    """Validate one raw message value; never raises.

    With ``mask``, personal data in the accepted item (its text, source,
    entities, meta and a given id) and in a rejection's detail is masked here,
    where the item is parsed: everything after sees the masked item only. The
    id of an item without one is derived from the original text, so two items
    that differ only in what was masked stay two items.

    >>> limits = Limits(max_message_bytes=1000, max_text_chars=100, max_entities=4)
    >>> acc = validate(b'{"text": "mail jane@example.com"}', kafka_ts_ms=0, limits=limits,
    ...                mask=Masker())
    >>> acc.item.text, acc.id == validate(b'{"text": "mail jane@example.com"}', kafka_ts_ms=0,
    ...                                   limits=limits).id
    ('mail [EMAIL]', True)
    """
    try:
        outcome = _validate(raw, kafka_ts_ms, limits, now or datetime.now(UTC))
        if mask is None:
            return outcome
        if isinstance(outcome, Rejected):
            return Rejected(outcome.reason, mask.mask(outcome.detail))
        return masked(outcome, mask)
    except Exception as exc:  # noqa: BLE001 - whatever a message holds, it is data, not a crash
        detail = _detail(f"{type(exc).__name__}: {exc}")
        return Rejected("unexpected", mask.mask(detail) if mask is not None else detail)


def masked(acc: Accepted, mask: Masker) -> Accepted:
    """``acc`` with personal data masked in every field of the item that is kept."""
    item = acc.item
    update: dict[str, Any] = {
        "text": mask.mask(item.text),
        "entities": [mask.mask(e) for e in item.entities],
        "meta": mask.mask_json(item.meta),
    }
    if item.source is not None:
        update["source"] = mask.mask(item.source)
    if item.id is not None:
        update["id"] = mask.mask_id(item.id)
    return Accepted(item=item.model_copy(update=update), id=mask.mask_id(acc.id))


def _detail(text: str) -> str:
    return storable_text(text)[:500]


def _validate(
    raw: bytes | None, kafka_ts_ms: int | None, limits: Limits, now: datetime
) -> Accepted | Rejected:
    if raw is None:
        return Rejected("malformed_json", "message has no value (tombstone)")
    if len(raw) > limits.max_message_bytes:
        return Rejected(
            "oversized", f"{len(raw)} bytes > max_message_bytes={limits.max_message_bytes}"
        )
    try:
        decoded = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected("invalid_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        payload = decode_json(decoded)
    except json.JSONDecodeError as exc:
        return Rejected("malformed_json", f"line {exc.lineno} col {exc.colno}: {exc.msg}")
    except RecursionError:
        return Rejected("malformed_json", "nested too deeply")
    except ValueError as exc:  # NaN, 1e999, an integer of more than 4,300 digits
        return Rejected("malformed_json", _detail(str(exc)))
    if not isinstance(payload, dict):
        return Rejected("not_an_object", f"expected a JSON object, got {type(payload).__name__}")
    try:
        item = NewsItem.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "item"
        reason = "ts_out_of_range" if "out of range" in first["msg"] else "schema"
        return Rejected(reason, _detail(f"{where}: {first['msg']} ({exc.error_count()} error(s))"))
    except RecursionError:
        return Rejected("schema", "meta is nested too deeply")
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
    horizon = now + timedelta(seconds=limits.max_future_s)
    if item.ts is None:
        # The broker's time when the feed gave none (unless that is absurd too).
        ts = kafka_time(kafka_ts_ms)
        item = item.model_copy(update={"ts": ts if ts is not None and ts <= horizon else now})
    elif item.ts > horizon:
        return Rejected(
            "ts_out_of_range",
            f"ts {item.ts.isoformat()} is more than {limits.max_future_s:g} s in the future",
        )
    return Accepted(item=item, id=item.resolved_id())


M = TypeVar("M", bound=BaseModel)


def parse_message(model: type[M], raw: bytes | None) -> M:
    """A label or control message from its raw value, by the rules news items follow.

    Strict JSON (no NaN, no number that overflows), then the model, whose
    fields normalise NUL and lone surrogates (a label whose text holds half an
    emoji is kept, as an item's would be). Anything else is a ``ValueError``
    with a one-line reason.

    >>> from stream.schemas import LabelMessage
    >>> parse_message(LabelMessage, b'{"text": "up \\ud83d", "label": "positive"}').text
    'up \ufffd'
    >>> parse_message(LabelMessage, b'{"text": "x", "label": "meh"}')
    Traceback (most recent call last):
    ...
    ValueError: label: Input should be 'negative', 'neutral' or 'positive'
    """
    if raw is None:
        raise ValueError("message has no value (tombstone)")
    try:
        payload = decode_json(bytes(raw).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(_detail(f"not JSON: {exc}")) from None
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise ValueError(_detail(f"{where}: {first['msg']}")) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
