"""Publish a CSV/JSONL file to the ``news`` topic as a live feed.

Rows become :class:`~stream.schemas.NewsItem` JSON. With ``time_warp`` the
gaps between the rows' own timestamps are replayed, sped up by that factor;
``rate`` caps items per second; ``loop`` replays the file again and again
(with fresh ids, so each pass is new items).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer

from learner.data import TEXT_COLUMNS, DataError
from stream.outage import Health, Stopping, Waiter
from stream.publish import Outgoing, Publisher
from stream.schemas import NewsItem

_ID_COLS = ("id", "item_id", "uuid")
_TS_COLS = ("ts", "timestamp", "created_at", "date", "datetime", "published_at", "time")
_SOURCE_COLS = ("source", "feed", "author")
_ENTITY_COLS = ("entities", "tickers", "symbols")
_GROUP = 200  # items sent before their acknowledgements are checked
_GROUP_S = 0.2  # or seconds


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    lowered = {k.lower(): v for k, v in row.items()}
    for n in names:
        v = lowered.get(n)
        if v not in (None, ""):
            return v
    return None


def text_column(rows: list[dict[str, Any]]) -> str:
    """The column of ``rows`` that holds the text (the first of ``TEXT_COLUMNS`` present)."""
    if not rows:
        raise DataError("the file has no rows with text")
    keys = {k.lower(): k for k in rows[0]}
    for name in TEXT_COLUMNS:
        if name in keys:
            return keys[name]
    raise DataError(f"no text column among {sorted(rows[0])}; name one with --text-col")


def row_to_item(row: dict[str, Any], text_col: str = "text") -> dict[str, Any]:
    """A file row as a ``news`` message payload (a JSON-able dict).

    >>> row_to_item({"text": "ACME up", "created_at": "2020-04-15 01:03:46+00:00", "id": 7})
    {'text': 'ACME up', 'id': '7', 'ts': '2020-04-15T01:03:46+00:00'}
    """
    item: dict[str, Any] = {"text": str(row[text_col])}
    if (v := _first(row, _ID_COLS)) is not None:
        item["id"] = str(v)
    if (v := _first(row, _TS_COLS)) is not None:
        item["ts"] = v if isinstance(v, int | float) else _iso(str(v))
    if (v := _first(row, _SOURCE_COLS)) is not None:
        item["source"] = str(v)
    if (v := _first(row, _ENTITY_COLS)) is not None:
        if isinstance(v, str):
            v = [e.strip() for e in v.replace(";", ",").split(",") if e.strip()]
        elif not isinstance(v, list):
            v = [v]  # one entity given as a bare value (a number, say)
        item["entities"] = [str(e) for e in v if not isinstance(e, dict | list)]
    return item


def _iso(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value  # let the worker reject it with a reason, as it would from any feed
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def _event_seconds(item: dict[str, Any]) -> float | None:
    ts = item.get("ts")
    if ts is None:
        return None
    try:
        return NewsItem._parse_ts(ts).timestamp()  # type: ignore[union-attr]
    except ValueError:
        return None


def publish(
    producer: KafkaProducer | Publisher,
    topic: str,
    items: Iterable[dict[str, Any]],
    *,
    rate: float | None = None,
    time_warp: float | None = None,
    stop: threading.Event | None = None,
    health: Health | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send items in order, paced by ``rate`` and/or ``time_warp``; returns how many.

    Every send is checked: items go out in small groups (every ``_GROUP`` items
    or ``_GROUP_S`` seconds), each delivered and acknowledged before the next
    (:class:`~stream.publish.Publisher`), so a broker outage is waited out
    rather than losing the feed. Returns early, not counting what was not
    acknowledged, when ``stop`` is set. ``progress(sent)`` is told the count of
    acknowledged items after each group.
    """
    publisher = producer if isinstance(producer, Publisher) else Publisher(lambda: producer)
    stop = stop or threading.Event()
    waiter = Waiter(health or Health("feed"), stop)
    sent = 0
    group: list[Outgoing] = []
    grouped_at = time.monotonic()

    def deliver() -> None:
        nonlocal sent, group, grouped_at
        if group:
            try:
                done = publisher.deliver(group, waiter)
            except Stopping:
                group = []
                return
            sent += len(done.published)
            if progress is not None:
                progress(sent)
        group, grouped_at = [], time.monotonic()

    start = time.monotonic()
    first_event: float | None = None
    for queued, item in enumerate(items):
        if stop.is_set():
            break
        due = start + queued / rate if rate else start
        if time_warp:
            event = _event_seconds(item)
            if event is not None:
                first_event = event if first_event is None else first_event
                due = max(due, start + (event - first_event) / time_warp)
        delay = due - time.monotonic()
        if delay > 0:
            deliver()  # waiting anyway: send what is queued first
            if stop.wait(max(0.0, due - time.monotonic())):
                break
        key = item.get("id")
        # A lone surrogate (a broken emoji in the file) goes out as its JSON escape.
        value = json.dumps(item, ensure_ascii=False).encode("utf-8", "backslashreplace")
        key_bytes = str(key).encode("utf-8", "backslashreplace") if key else None
        group.append(Outgoing(topic, key_bytes, value, queued))
        if len(group) >= _GROUP or time.monotonic() - grouped_at >= _GROUP_S:
            deliver()
    deliver()
    return sent


def looped(items: list[dict[str, Any]], loop: bool) -> Iterator[dict[str, Any]]:
    """The items once, or forever with a pass number in each id (each pass is new items)."""
    yield from items
    n = 1
    while loop and items:
        for item in items:
            base = (
                item.get("id")
                or NewsItem.model_validate(
                    {k: v for k, v in item.items() if k in ("text", "source")}
                ).resolved_id()
            )
            yield {**item, "id": f"{base}~{n}"}
        n += 1
