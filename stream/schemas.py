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
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

Label = Literal["negative", "neutral", "positive"]


class NewsItem(BaseModel):
    """An item as a feed publishes it on the ``news`` topic."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    id: StrictStr | None = Field(None, min_length=1, max_length=256)
    text: StrictStr
    ts: datetime | None = None
    source: StrictStr | None = Field(None, max_length=256)
    entities: list[StrictStr] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: object) -> object:
        # JSON has no datetime: accept ISO-8601 strings and epoch seconds/milliseconds.
        if v is None or isinstance(v, datetime):
            return v
        if isinstance(v, bool):
            raise ValueError("ts must be an ISO-8601 string or epoch seconds")
        if isinstance(v, int | float):
            seconds = v / 1000.0 if v > 1e11 else float(v)
            return datetime.fromtimestamp(seconds, tz=UTC)
        if isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"ts is not ISO-8601: {v[:40]!r}") from exc
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        raise ValueError("ts must be an ISO-8601 string or epoch seconds")

    def resolved_id(self) -> str:
        """The given id, or a stable one derived from the content.

        The same text from the same source is the same item, so a feed that
        re-sends it is not double-counted.
        """
        if self.id:
            return self.id
        basis = json.dumps([self.source or "", self.text], ensure_ascii=False)
        return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:24]


class Neighbor(BaseModel):
    """A similar past item, from the FAISS index."""

    model_config = ConfigDict(frozen=True)

    id: str
    similarity: float
    label: Label | None


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


class LabelMessage(BaseModel):
    """A label for an item (by id, or with its text), on ``news.labels``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    item_id: str | None = None
    text: str | None = None
    label: Label | None = None  # the sentiment; None when only the topic is corrected
    topic: str | None = None  # an analyst's topic correction
    source: str = "analyst"
    annotator: str | None = None
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))


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
    version: str | None = None
    actor: str = "system"
    reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Rejection(BaseModel):
    """What goes to ``news.dlq``: the reason, where it came from, and the raw bytes."""

    model_config = ConfigDict(frozen=True)

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    raw: str  # the original value, decoded with replacement characters, truncated
    rejected_at: datetime


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
