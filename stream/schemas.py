"""Message contracts on the wire (JSON, UTF-8).

The incoming item is deliberately forgiving about what is optional and strict
about types: ``text`` must be a string, ``entities`` a list of strings.

>>> item = NewsItem(text="ACME beats estimates", source="wire")
>>> item.resolved_id() == NewsItem(text="ACME beats estimates", source="wire").resolved_id()
True
>>> len(item.resolved_id())
24
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    field_validator,
)

from retrieval.neighbors import Neighbor

Label = Literal["negative", "neutral", "positive"]

# What every store and wire can carry: the column sizes of the store, the depth a JSON
# serialiser handles without running out of stack, and event times a datetime can
# convert to UTC and back (a year-9999 time with a negative offset overflows).
MAX_ID_CHARS = 256
MAX_SOURCE_CHARS = 256
MAX_ENTITY_CHARS = 64
MAX_TOPIC_CHARS = 64
MAX_META_DEPTH = 16
MAX_LABEL_TEXT_CHARS = 20_000
TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TS_MAX = datetime(9000, 1, 1, tzinfo=UTC)


def storable_text(value: str) -> str:
    r"""``value`` with the two things no store or UTF-8 wire can carry replaced by U+FFFD.

    A NUL character (PostgreSQL text cannot hold one) and a lone UTF-16 surrogate
    (valid in a JSON escape, not encodable as UTF-8); everything else is kept.

    >>> storable_text("ACME\x00 up \ud83d") == "ACME\ufffd up \ufffd"
    True
    >>> storable_text("a pair \ud83d\ude00 is joined") == "a pair \U0001f600 is joined"
    True
    """
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A valid pair split over two code points is joined; a lone half becomes U+FFFD.
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _printable_id(value: str) -> str:
    # An id is a key in the store and on Kafka: no control characters, nothing to normalise.
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"must be printable text without control characters (got {ch!r})")
    return value


def _entity(value: str) -> str:
    value = storable_text(value)
    # Tickers are upper-cased later, and upper case can be longer ("ß" -> "SS").
    if len(value.upper()) > MAX_ENTITY_CHARS:
        raise ValueError(f"an entity is at most {MAX_ENTITY_CHARS} characters")
    return value


def clean_json(value: Any, *, depth: int = 0, max_depth: int = MAX_META_DEPTH) -> Any:
    r"""A JSON value that every store and wire accepts, or ``ValueError``.

    Strings (keys too) go through :func:`storable_text`; nesting deeper than
    ``max_depth``, non-finite numbers and integers beyond 64 bits are refused.

    >>> clean_json({"a": [1, 2.5, "x\x00"]}) == {"a": [1, 2.5, "x\ufffd"]}
    True
    >>> clean_json({"a": float("nan")})
    Traceback (most recent call last):
    ...
    ValueError: a number in meta is not finite
    """
    if depth > max_depth:
        raise ValueError(f"meta is nested deeper than {max_depth} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError("an integer in meta does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a number in meta is not finite")
        return value
    if isinstance(value, list | tuple):
        return [clean_json(v, depth=depth + 1, max_depth=max_depth) for v in value]
    if isinstance(value, dict):
        return {
            storable_text(str(k)): clean_json(v, depth=depth + 1, max_depth=max_depth)
            for k, v in value.items()
        }
    raise ValueError(f"meta holds a {type(value).__name__}, which is not JSON")


def _clean_meta(value: dict[str, Any]) -> dict[str, Any]:
    return clean_json(value)


def parse_ts(v: object) -> datetime | None:
    """An event time from JSON (ISO-8601, or epoch seconds or milliseconds), aware, in UTC.

    ``ValueError`` for anything else, and for times outside ``[TS_MIN, TS_MAX)``.

    >>> parse_ts("2020-04-15T01:03:46Z").isoformat()
    '2020-04-15T01:03:46+00:00'
    >>> parse_ts(1_586_912_626_000).isoformat()
    '2020-04-15T01:03:46+00:00'
    >>> parse_ts(1e308)
    Traceback (most recent call last):
    ...
    ValueError: ts is out of range (1970-01-01 to 9000-01-01)
    """
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError("ts must be an ISO-8601 string or epoch seconds")
    try:
        if isinstance(v, datetime):
            parsed = v
        elif isinstance(v, int | float):
            if not math.isfinite(v):
                raise OverflowError
            seconds = v / 1000.0 if v > 1e11 else float(v)
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        elif isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"ts is not ISO-8601: {storable_text(v[:40])!r}") from exc
        else:
            raise ValueError("ts must be an ISO-8601 string or epoch seconds")
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"ts is out of range ({TS_MIN:%Y-%m-%d} to {TS_MAX:%Y-%m-%d})") from exc
    if not TS_MIN <= parsed < TS_MAX:
        raise ValueError(f"ts is out of range ({TS_MIN:%Y-%m-%d} to {TS_MAX:%Y-%m-%d})")
    return parsed


StorableStr = Annotated[StrictStr, AfterValidator(storable_text)]
ItemId = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_ID_CHARS),
    AfterValidator(_printable_id),
]
Entity = Annotated[StrictStr, AfterValidator(_entity)]


class NewsItem(BaseModel):
    """An item as a feed publishes it on the ``news`` topic.

    Whatever it accepts is storable on SQLite and PostgreSQL and publishable
    as JSON: see :func:`storable_text`, :func:`clean_json` and :func:`parse_ts`
    for what is normalised and what is refused.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    id: ItemId | None = None
    text: StorableStr
    ts: datetime | None = None
    source: Annotated[StorableStr, StringConstraints(max_length=MAX_SOURCE_CHARS)] | None = None
    entities: list[Entity] = Field(default_factory=list)
    meta: Annotated[dict[str, Any], AfterValidator(_clean_meta)] = Field(default_factory=dict)

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: object) -> object:
        # JSON has no datetime: accept ISO-8601 strings and epoch seconds/milliseconds.
        return parse_ts(v)

    def resolved_id(self) -> str:
        """The given id, or a stable one derived from the content.

        The same text from the same source is the same item, so a feed that
        re-sends it is not double-counted.
        """
        if self.id:
            return self.id
        basis = json.dumps([self.source or "", self.text], ensure_ascii=False)
        return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:24]


class ScoredItem(BaseModel):
    """What the worker publishes on ``news.scored`` and writes to the store."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    ts: datetime
    source: str | None = None
    entities: list[str] = Field(default_factory=list)
    topic: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    label: Label
    probs: dict[str, float]
    confidence: float
    model_version: str
    neighbors: list[Neighbor] = Field(default_factory=list)
    scored_at: datetime


def _aware_ts(v: object) -> object:
    parsed = parse_ts(v)
    if parsed is None:
        raise ValueError("ts must not be null")
    return parsed


Ts = Annotated[datetime, AfterValidator(_aware_ts)]
Short = Annotated[StorableStr, StringConstraints(max_length=MAX_TOPIC_CHARS)]
Name = Annotated[StorableStr, StringConstraints(max_length=MAX_SOURCE_CHARS)]


class LabelMessage(BaseModel):
    """A label for an item (by id, or with its text), on ``news.labels``.

    As strict as :class:`NewsItem` about what it lets into the store: anything
    it accepts fits the ``labels`` table on SQLite and PostgreSQL.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    item_id: ItemId | None = None
    text: Annotated[StorableStr, StringConstraints(max_length=MAX_LABEL_TEXT_CHARS)] | None = None
    label: Label | None = None  # the sentiment; None when only the topic is corrected
    topic: Short | None = None  # an analyst's topic correction
    source: Short = "analyst"
    annotator: Name | None = None
    ts: Ts = Field(default_factory=lambda: datetime.now(UTC))
    # Who sent it and the proof (see stream/origins.py): the learner trains only on
    # labels from an allowed origin with a valid signature.
    origin: Short | None = None
    signature: Short | None = None


class AlertMessage(BaseModel):
    """An alert, on ``moodwire.alerts`` (the full JSON of :class:`stream.alerts.Alert`).

    A revision of an open episode is published under the same ``id`` with a
    higher ``revision``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    kind: str
    scope: str
    entity: str | None = None
    topic: str | None = None
    severity: Literal["info", "warning", "critical"] = "warning"
    window_start: datetime
    window_end: datetime
    statistic: float
    baseline: float
    revision: int = 1
    evidence: dict[str, Any] = Field(default_factory=dict)
    similar: list[dict[str, Any]] = Field(default_factory=list)


class ControlMessage(BaseModel):
    """An operator or learner command, on ``moodwire.control``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    action: Literal["promote", "rollback", "retrain", "drift", "reload"]
    version: Short | None = None
    actor: Name = "system"
    reason: Annotated[StorableStr, StringConstraints(max_length=4000)] | None = None
    details: Annotated[dict[str, Any], AfterValidator(_clean_meta)] = Field(default_factory=dict)
    ts: Ts = Field(default_factory=lambda: datetime.now(UTC))
    # Who sent it and the proof (see stream/origins.py): the learner acts only on commands
    # from an allowed origin, validly signed, within the replay window of their ts.
    origin: Short | None = None
    signature: Short | None = None


class Rejection(BaseModel):
    """What goes to ``news.dlq``: the reason, where it came from, and the raw bytes.

    ``raw`` is a readable preview (invalid UTF-8 and NUL shown as U+FFFD);
    ``raw_base64`` is the value itself, byte for byte, up to ``raw_bytes``
    (``raw_truncated`` when the value was longer than what is kept). With
    personal data masked (``MOODWIRE_MASK_PERSONAL_DATA``) the preview is
    masked and ``raw_base64`` is absent; ``raw_sha256`` (always there) finds the
    original on its topic for whoever may read it there.
    """

    model_config = ConfigDict(frozen=True)

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    raw: str  # the original value, decoded with replacement characters, truncated
    rejected_at: datetime
    raw_base64: str | None = None
    raw_bytes: int | None = None
    raw_truncated: bool = False
    raw_sha256: str | None = None


def label_id(msg: LabelMessage) -> str:
    """A stable id for a label message, so a re-delivered one is stored once."""
    basis = json.dumps(
        [msg.item_id, msg.text, msg.label, msg.source, msg.annotator, msg.ts.isoformat()]
        + ([msg.topic] if msg.topic is not None else []),
        ensure_ascii=False,
    )
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:32]


def label_row(msg: LabelMessage) -> dict[str, Any]:
    """A label message as the store's ``labels`` row (keyed by :func:`label_id`)."""
    return {
        "id": label_id(msg),
        "item_id": msg.item_id,
        "text": msg.text,
        "label": msg.label,
        "topic": msg.topic,
        "source": msg.source,
        "annotator": msg.annotator,
        "ts": msg.ts,
    }
