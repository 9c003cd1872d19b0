"""Readers of the store, the registry and the index for the dashboard.

Every query aggregates in the database (time buckets, counts, means) so a page
costs the same with 100 or 100,000 items, and every reader is cached with a
short TTL: many open dashboards cost the store one query per TTL each. Nothing
here imports training code, and nothing blocks on a worker.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
import streamlit as st

from dashboard import context
from state.registry import RegistryError
from state.shared_registry import open_registry
from state.store import (
    Store,
    alerts,
    audit_log,
    drift_events,
    item_entities,
    items,
    labels,
)

TTL_S = 5  # how stale a page may be: the live refresh interval


@st.cache_resource
def get_store(url: str) -> Store:
    return Store(url)


def store_reachable(url: str) -> bool:
    """Whether the store answers a trivial query now (never raises, never cached)."""
    try:
        with get_store(url).engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception:  # noqa: BLE001 - unreachable is the answer
        return False
    return True


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _naive(dt: datetime) -> datetime:
    """Bound parameters as naive UTC: SQLite stores them so, Postgres takes them as UTC."""
    return dt.astimezone(UTC).replace(tzinfo=None)


def _bucket(col: Any, dialect: str, seconds: int) -> Any:
    """Seconds since the epoch of ``col``'s bucket start, computed in SQL."""
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 38):
        epoch = sa.func.unixepoch(col, type_=sa.BigInteger)  # a third faster than strftime
    elif dialect == "sqlite":
        epoch = sa.cast(sa.func.strftime("%s", col), sa.BigInteger)
    else:
        epoch = sa.cast(sa.func.floor(sa.extract("epoch", col)), sa.BigInteger)
    return (epoch // seconds) * seconds


def _frame(rows: list[Any], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


# -- overview -------------------------------------------------------------------------------


@st.cache_data(ttl=TTL_S)
def headline_counts(url: str) -> dict[str, int]:
    """The overview's figures, from indexed columns only (``Store.stats`` scans more)."""
    store = get_store(url)
    with store.engine.connect() as conn:
        by_label = dict(
            conn.execute(sa.select(items.c.label, sa.func.count()).group_by(items.c.label)).all()
        )
        versions = conn.execute(
            sa.select(sa.func.count(sa.distinct(items.c.model_version)))
        ).scalar_one()
        open_alerts = conn.execute(
            sa.select(sa.func.count()).select_from(alerts).where(alerts.c.acknowledged_at.is_(None))
        ).scalar_one()
        drift = conn.execute(sa.select(sa.func.count()).select_from(drift_events)).scalar_one()
    return {
        "items": int(sum(by_label.values())),
        "negative": int(by_label.get("negative", 0)),
        "versions": int(versions),
        "open_alerts": int(open_alerts),
        "drift_events": int(drift),
    }


@st.cache_data(ttl=TTL_S)
def time_bounds(url: str) -> tuple[datetime | None, datetime | None]:
    """The oldest and newest event times in the store."""
    # Two scalar subqueries: SQLite answers min() and max() each from the index only when
    # they are asked for alone (together they scan the table).
    lo_q = sa.select(sa.func.min(items.c.ts)).scalar_subquery()
    hi_q = sa.select(sa.func.max(items.c.ts)).scalar_subquery()
    with get_store(url).engine.connect() as conn:
        lo, hi = conn.execute(sa.select(lo_q, hi_q)).one()
    return _utc(lo), _utc(hi)


def bucket_seconds(start: datetime, end: datetime, target: int = 120) -> int:
    """A round bucket length giving about ``target`` buckets over the range.

    >>> from datetime import datetime, timedelta
    >>> t = datetime(2026, 1, 1)
    >>> bucket_seconds(t, t + timedelta(hours=1)), bucket_seconds(t, t + timedelta(days=7))
    (30, 7200)
    """
    span = max(1.0, (end - start).total_seconds())
    steps = (1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
    for s in steps:
        if span / s <= target:
            return s
    return 86400 * 7


@st.cache_data(ttl=TTL_S)
def sentiment_series(
    url: str, start: datetime, end: datetime, bucket_s: int, scope: str = "all", key: str = ""
) -> pd.DataFrame:
    """Per time bucket: volume, mean score (p_pos − p_neg) and negative share.

    ``scope`` is ``all``, ``entity`` (from the per-entity table) or ``topic``.
    """
    store = get_store(url)
    if scope == "entity":
        t = item_entities
        score = t.c.score
        where = [t.c.entity == key]
    else:
        t = items
        score = t.c.p_positive - t.c.p_negative
        where = [t.c.topic == key] if scope == "topic" else []
    b = _bucket(t.c.ts, store.dialect, bucket_s).label("b")
    q = (
        sa.select(
            b,
            sa.func.count().label("volume"),
            sa.func.avg(score).label("score"),
            sa.func.avg(sa.case((t.c.label == "negative", 1.0), else_=0.0)).label("neg"),
        )
        .where(t.c.ts >= _naive(start), t.c.ts < _naive(end), *where)
        .group_by(b)
        .order_by(b)
    )
    with store.engine.connect() as conn:
        df = _frame(conn.execute(q).all(), ["b", "volume", "score", "negative_share"])
    df["time"] = pd.to_datetime(df["b"].astype("int64"), unit="s", utc=True)
    return df.drop(columns=["b"])[["time", "volume", "score", "negative_share"]]


@st.cache_data(ttl=60)
def entity_choices(url: str, limit: int = 300) -> list[str]:
    """Entities by how often they occur (the most talked-about first)."""
    store = get_store(url)
    n = sa.func.count().label("n")
    q = (
        sa.select(item_entities.c.entity, n)
        .group_by(item_entities.c.entity)
        .order_by(n.desc())
        .limit(limit)
    )
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(q)]


@st.cache_data(ttl=60)
def topic_choices(url: str) -> list[str]:
    store = get_store(url)
    q = sa.select(items.c.topic).where(items.c.topic.is_not(None)).distinct()
    with store.engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(q))


@st.cache_data(ttl=300)
def taxonomy_topics(path: str | None) -> list[str]:
    """Every topic an analyst may assign: the taxonomy's, and ``other``."""
    from stream.topics import OTHER, Taxonomy

    taxonomy = Taxonomy.load(path) if path else Taxonomy.default()
    return [*taxonomy.names(), OTHER]


@st.cache_data(ttl=TTL_S)
def movers(
    url: str, start: datetime, end: datetime, min_items: int = 5, limit: int = 10
) -> pd.DataFrame:
    """Entities whose mean score moved most between the window and the one before it."""
    store = get_store(url)
    before = start - (end - start)
    t = item_entities
    now = t.c.ts >= _naive(start)
    q = (
        sa.select(
            t.c.entity,
            sa.func.sum(sa.case((now, 1), else_=0)).label("n"),
            sa.func.avg(sa.case((now, t.c.score), else_=None)).label("score"),
            sa.func.sum(sa.case((now, 0), else_=1)).label("n_before"),
            sa.func.avg(sa.case((now, None), else_=t.c.score)).label("score_before"),
            sa.func.avg(
                sa.case((now & (t.c.label == "negative"), 1.0), (now, 0.0), else_=None)
            ).label("negative_share"),
        )
        .where(t.c.ts >= _naive(before), t.c.ts < _naive(end))
        .group_by(t.c.entity)
    )
    with store.engine.connect() as conn:
        df = _frame(
            conn.execute(q).all(),
            ["entity", "n", "score", "n_before", "score_before", "negative_share"],
        )
    df = df[df["n"] >= min_items].copy()
    if df.empty:
        return pd.DataFrame(
            columns=["entity", "n", "score", "score_before", "change", "negative_share"]
        )
    # With no earlier items the change is measured from neutral.
    df["score_before"] = df["score_before"].where(df["n_before"] >= min_items)
    df["change"] = df["score"] - df["score_before"].fillna(0.0)
    df = df.reindex(df["change"].abs().sort_values(ascending=False).index).head(limit)
    return df[["entity", "n", "score", "score_before", "change", "negative_share"]].reset_index(
        drop=True
    )


# -- alerts ---------------------------------------------------------------------------------


@st.cache_data(ttl=TTL_S)
def alert_list(
    url: str,
    since: datetime | None = None,
    kind: str | None = None,
    entity: str | None = None,
    include_muted: bool = False,
    include_acknowledged: bool = True,
    limit: int = 200,
) -> list[dict[str, Any]]:
    rows = get_store(url).alert_rows(since=since, entity=entity, kind=kind, limit=limit)
    now = datetime.now(UTC)
    out = []
    for r in rows:
        muted = _utc(r.get("muted_until"))
        r["muted"] = muted is not None and muted > now
        if r["muted"] and not include_muted:
            continue
        if r.get("acknowledged_at") and not include_acknowledged:
            continue
        out.append(r)
    return out


@st.cache_data(ttl=TTL_S)
def alert_by_id(url: str, alert_id: str) -> dict[str, Any] | None:
    """One alert (a notification's link opens it), with ``muted`` as in :func:`alert_list`."""
    r = get_store(url).alert_row(alert_id)
    if r is not None:
        muted = _utc(r.get("muted_until"))
        r["muted"] = muted is not None and muted > datetime.now(UTC)
    return r


@st.cache_data(ttl=TTL_S)
def items_by_ids(url: str, ids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return get_store(url).items_by_ids(list(ids))


# -- drift & models -------------------------------------------------------------------------

TIMELINE_ACTIONS = (
    "promote",
    "rollback",
    "retrain",
    "candidate_rejected",
    "candidate_awaiting_approval",
)


@st.cache_data(ttl=TTL_S)
def timeline(url: str, limit: int = 500) -> pd.DataFrame:
    """Drift events, retrain requests, candidates, promotions and rollbacks, newest first."""
    store = get_store(url)
    with store.engine.connect() as conn:
        drift = conn.execute(
            sa.select(
                drift_events.c.ts,
                drift_events.c.detector,
                drift_events.c.signal,
                drift_events.c.statistic,
                drift_events.c.origin,
                drift_events.c.model_version,
            )
            .order_by(drift_events.c.seq.desc())
            .limit(limit)
        ).all()
        acts = conn.execute(
            sa.select(
                audit_log.c.ts,
                audit_log.c.action,
                audit_log.c.actor,
                audit_log.c.target,
                audit_log.c.reason,
            )
            .where(audit_log.c.action.in_(TIMELINE_ACTIONS))
            .order_by(audit_log.c.seq.desc())
            .limit(limit)
        ).all()
    rows = [
        {
            "time": _utc(r.ts),
            "event": "drift",
            "what": f"{r.detector} on {r.signal} (statistic {r.statistic:.3g})",
            "who": r.origin,
            "version": r.model_version,
        }
        for r in drift
    ] + [
        {
            "time": _utc(r.ts),
            "event": r.action.replace("candidate_", "candidate "),
            "what": (r.reason or "")[:300],
            "who": r.actor,
            "version": r.target,
        }
        for r in acts
    ]
    df = pd.DataFrame(rows, columns=["time", "event", "what", "who", "version"])
    return df.sort_values("time", ascending=False).reset_index(drop=True)


@st.cache_data(ttl=TTL_S)
def accuracy_by_version(url: str, bucket_s: int = 300) -> pd.DataFrame:
    """Accuracy on incoming labels per time bucket (of the label) and per scoring version."""
    store = get_store(url)
    b = _bucket(labels.c.ts, store.dialect, bucket_s).label("b")
    right = sa.func.sum(sa.case((labels.c.label == items.c.label, 1), else_=0)).label("right")
    q = (
        sa.select(b, items.c.model_version, sa.func.count().label("n"), right)
        .select_from(labels.join(items, items.c.id == labels.c.item_id))
        .where(labels.c.label.is_not(None))
        .group_by(b, items.c.model_version)
        .order_by(b)
    )
    with store.engine.connect() as conn:
        df = _frame(conn.execute(q).all(), ["b", "version", "labels", "right"])
    df["time"] = pd.to_datetime(df["b"].astype("int64"), unit="s", utc=True)
    df["accuracy"] = df["right"] / df["labels"].clip(lower=1)
    return df[["time", "version", "labels", "accuracy"]]


@st.cache_data(ttl=TTL_S)
def models(
    registry_path: str, registry_url: str | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """The serving version and every version's card, newest first (from the shared
    registry's database when ``registry_url`` names one)."""
    registry = open_registry(registry_path, registry_url)
    try:
        serving = registry.serving()
        versions = registry.versions()
    except FileNotFoundError:
        return None, []
    except RegistryError as exc:  # a malformed pointer: show the versions, say what is wrong
        st.error(f"The registry's serving pointer is unusable: {exc}")
        return None, [{"version": v.name, **v.card} for v in reversed(registry.versions())]
    return serving, [{"version": v.name, **v.card} for v in reversed(versions)]


@st.cache_data(ttl=TTL_S)
def audit(url: str, limit: int = 200) -> pd.DataFrame:
    rows = get_store(url).audit_rows(limit=limit)[::-1]  # newest first
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["ts", "actor", "action", "target", "reason"])
    return df[["ts", "actor", "action", "target", "reason"]]


# -- explore --------------------------------------------------------------------------------

ITEM_COLUMNS = (
    items.c.id,
    items.c.ts,
    items.c.text,
    items.c.label,
    items.c.topic,
    items.c.confidence,
    items.c.source,
    items.c.entities,
    items.c.model_version,
)


def _item_filters(
    entity: str | None,
    topic: str | None,
    label: str | None,
    source: str | None,
    start: datetime | None,
    end: datetime | None,
) -> list[Any]:
    where: list[Any] = []
    if entity:
        where.append(
            items.c.id.in_(
                sa.select(item_entities.c.item_id).where(item_entities.c.entity == entity)
            )
        )
    if topic:
        where.append(items.c.topic == topic)
    if label:
        where.append(items.c.label == label)
    if source:
        where.append(items.c.source == source)
    if start is not None:
        where.append(items.c.ts >= _naive(start))
    if end is not None:
        where.append(items.c.ts < _naive(end))
    return where


@st.cache_data(ttl=TTL_S)
def search_text(
    url: str,
    text: str = "",
    entity: str | None = None,
    topic: str | None = None,
    label: str | None = None,
    source: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
) -> pd.DataFrame:
    """Items whose text contains ``text`` (case-insensitive), newest first, filtered."""
    store = get_store(url)
    where = _item_filters(entity, topic, label, source, start, end)
    if text.strip():
        where.append(items.c.text.ilike(f"%{text.strip()}%"))
    q = sa.select(*ITEM_COLUMNS).where(*where).order_by(items.c.ts.desc()).limit(limit)
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    return _with_corrections(url, _frame(rows, [c.name for c in ITEM_COLUMNS]))


@st.cache_data(ttl=60)
def sources(url: str) -> list[str]:
    store = get_store(url)
    q = sa.select(items.c.source).where(items.c.source.is_not(None)).distinct().limit(100)
    with store.engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(q))


def _with_corrections(url: str, df: pd.DataFrame) -> pd.DataFrame:
    """Add the latest analyst label and topic of each item (a correction shows at once)."""
    df["corrected_label"] = None
    df["corrected_topic"] = None
    if df.empty:
        return df
    latest = corrections(url, tuple(df["id"]))
    for col, field in (("corrected_label", "label"), ("corrected_topic", "topic")):
        df[col] = [latest.get(i, {}).get(field) for i in df["id"]]
    return df


def corrections(url: str, ids: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The latest label and topic given to each item (not cached: it must show at once)."""
    if not ids:
        return {}
    store = get_store(url)
    q = (
        sa.select(labels.c.item_id, labels.c.label, labels.c.topic)
        .where(labels.c.item_id.in_(ids))
        .order_by(labels.c.seq)
    )
    out: dict[str, dict[str, Any]] = {}
    with store.engine.connect() as conn:
        for item_id, label, topic in conn.execute(q):
            seen = out.setdefault(item_id, {})
            if label is not None:
                seen["label"] = label
            if topic is not None:
                seen["topic"] = topic
    return out


@st.cache_resource(show_spinner="loading the encoder and the index (once) …")
def past_items(url: str, index_dir: str) -> Any:
    """The FAISS index over the store, loaded once per dashboard process, read-only."""
    from pathlib import Path

    from retrieval.past_items import PastItems

    open_encoder = context.current().open_encoder
    if open_encoder is None:
        raise RuntimeError("meaning search needs a query encoder; this dashboard has none")
    embedder = open_encoder()
    past = PastItems(
        get_store(url),
        dim=embedder.dim,
        space_id=embedder.space_id,
        snapshot_dir=Path(index_dir),
        snapshot_every=1 << 62,  # never write: the workers own the snapshot
    )
    return embedder, past


def search_meaning(url: str, index_dir: str, query: str, k: int = 50) -> pd.DataFrame:
    """The ``k`` stored items nearest ``query`` in meaning (FAISS, frozen space)."""
    embedder, past = past_items(url, index_dir)
    past.catch_up()
    vectors = embedder.embed([query])
    hits = past.neighbors(vectors, k)[0]
    if not hits:
        return _with_corrections(url, _frame([], [c.name for c in ITEM_COLUMNS] + ["similarity"]))
    found = get_store(url).items_by_ids([h.id for h in hits])
    rows = []
    for h in hits:
        it = found.get(h.id)
        if it is not None:
            rows.append(
                {**{c.name: it.get(c.name) for c in ITEM_COLUMNS}, "similarity": h.similarity}
            )
    return _with_corrections(url, pd.DataFrame(rows))


@st.cache_resource(show_spinner="loading the model to explain with (once per version) …")
def explainer(registry: str, version: str) -> context.TextExplainer:
    """``version``'s explainer (``registry`` keys the cache), its model loaded on the first
    Explain, then kept."""
    open_explainer = context.current().open_explainer
    if open_explainer is None:
        raise context.ExplainError("this dashboard explains no scores (it has no explainer)")
    return open_explainer(version)


@st.cache_data(max_entries=1024, show_spinner="explaining (integrated gradients) …")
def explanation(registry: str, version: str, text: str) -> dict[str, Any]:
    """Why ``version`` gives ``text`` its label, word by word: once per (version, text), as
    a version never changes once written."""
    return dict(explainer(registry, version)(text))


def item(url: str, item_id: str) -> dict[str, Any] | None:
    return get_store(url).get_item(item_id)


def since_preset(preset: str, end: datetime) -> datetime | None:
    """The start of a named time range ending at ``end``.

    >>> from datetime import datetime, UTC
    >>> since_preset("1h", datetime(2026, 1, 1, 12, tzinfo=UTC)).hour
    11
    """
    spans = {
        "15m": timedelta(minutes=15),
        "1h": timedelta(hours=1),
        "6h": timedelta(hours=6),
        "24h": timedelta(days=1),
        "7d": timedelta(days=7),
        "30d": timedelta(days=30),
    }
    return end - spans[preset] if preset in spans else None
