"""``moodwire backtest FILE``: replay a file with timestamps through the alert rules.

The rows are scored by the serving model, tagged with entities and topics, and
written in event-time order to a throw-away store; the same
:class:`~stream.alerting.Alerter` the workers run then judges every window,
with similar past episodes searched among the replayed items that came before.
A replayed day therefore gives the alerts the live day gave.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from tqdm import tqdm

from learner.data import read_records
from moodwire.processes.worker import entity_tagger, topic_model
from moodwire.settings import Settings
from retrieval.past_items import PastItems
from state.store import Store
from stream.alerting import Alerter
from stream.feed import row_to_item, text_column
from stream.schemas import NewsItem
from stream.validate import Accepted
from stream.worker import item_row, scored_item

log = structlog.get_logger(__name__)


class BacktestError(ValueError):
    """The file cannot be replayed (no timestamps, no text, …)."""


def load_feed(
    path: Path, *, text_col: str | None = None, shuffle_times: int | None = None
) -> tuple[list[NewsItem], dict[str, int]]:
    """The file's rows as validated items in event-time order, and what was skipped.

    ``shuffle_times`` (a seed) deals the rows' timestamps out to other rows at
    random: the same texts and the same times, with every real episode destroyed
    (a stream on which any alert is a false alarm).
    """
    rows = read_records(path, text_col=text_col)
    if not rows:
        raise BacktestError(f"{path}: no rows with text")
    col = text_col or text_column(rows)
    items, skipped = [], Counter()
    for row in rows:
        payload = row_to_item(row, col)
        if "ts" not in payload:
            skipped["no_timestamp"] += 1
            continue
        try:
            items.append(NewsItem.model_validate(payload))
        except ValidationError:
            skipped["invalid"] += 1
    if not items:
        raise BacktestError(
            f"{path}: no row has a usable timestamp (a ts, timestamp, created_at or date "
            "column): alerts are judged in event time"
        )
    if shuffle_times is not None:
        times = [x.ts for x in items]
        random.Random(shuffle_times).shuffle(times)
        items = [x.model_copy(update={"ts": t}) for x, t in zip(items, times, strict=True)]
    items.sort(key=lambda x: x.ts)
    return items, dict(skipped)


def run_backtest(
    settings: Settings,
    path: Path,
    *,
    text_col: str | None = None,
    shuffle_times: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score, tag and replay ``path``; the alerts (latest revision of each) and a summary."""
    from stream.scorer import load_serving

    items, skipped = load_feed(path, text_col=text_col, shuffle_times=shuffle_times)
    scorer = load_serving(settings.open_registry(), **settings.scorer())
    tagger = entity_tagger(settings)
    topics = topic_model(settings, scorer.embedder.embed)
    with tempfile.TemporaryDirectory(prefix="moodwire-backtest-") as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'backtest.db'}")
        seen: set[str] = set()
        batch = max(16, settings.batch_size)
        bar = tqdm(total=len(items), desc="score", unit="item", disable=not progress)
        for start in range(0, len(items), batch):
            chunk = [x for x in items[start : start + batch] if x.resolved_id() not in seen]
            seen.update(x.resolved_id() for x in chunk)
            if chunk:
                store.write_batch(_rows(chunk, scorer, tagger, topics), [])
            bar.update(min(batch, len(items) - start))
        bar.close()
        past = PastItems(store, dim=scorer.embedder.dim, space_id=scorer.embedder.space_id)
        alerter = Alerter(store, settings.alerts, search=past.similar)
        alerter.seq = 0  # judge the whole file, not just its tail
        alerter.step(final=True)
        alerts = sorted(store.alert_rows(limit=100_000), key=lambda a: a["window_start"])
        stats = store.stats()
    per_day = Counter(a["window_start"][:10] for a in alerts)
    first, last = items[0].ts, items[-1].ts
    return {
        "file": str(path),
        "items": len(items),
        "skipped": skipped,
        "shuffled_times": shuffle_times is not None,
        "model_version": scorer.version,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "days": max(1, (last.date() - first.date()).days + 1),
        "window_s": settings.alerts.window_s,
        "by_label": stats["by_label"],
        "late_items": alerter.engine.late,
        "alert_count": len(alerts),
        "alerts_per_day": dict(sorted(per_day.items())),
        "by_kind": dict(Counter(a["kind"] for a in alerts)),
        "alerts": alerts,
    }


def _rows(chunk: list[NewsItem], scorer: Any, tagger: Any, topics: Any) -> list[dict[str, Any]]:
    """The store rows of a chunk, mapped as the worker maps them (no neighbours, no offsets)."""
    probs, vectors = scorer.score([x.text for x in chunk])
    assigned = topics.assign(vectors)
    now = datetime.now(UTC)
    labels = tuple(scorer.classifier.labels)
    out = []
    for item, p, v, (topic, _) in zip(chunk, probs, vectors, assigned, strict=True):
        scored = scored_item(
            Accepted(item=item, id=item.resolved_id()),
            p,
            labels,
            version=scorer.version,
            entities=tagger.tag(item.text, list(item.entities)),
            topic=topic,
            neighbors=[],
            scored_at=now,
        )
        out.append(item_row(scored, p, v))
    return out
