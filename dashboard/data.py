"""Cached readers of the store (SQL aggregated in the database, parameterised)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import sqlalchemy as sa
import streamlit as st

from moodwire.settings import Settings
from moodwire.store import Store, items


@st.cache_resource
def get_store(url: str) -> Store:
    return Store(url)


def settings() -> Settings:
    return Settings()


@st.cache_data(ttl=5)
def stats(url: str) -> dict:
    return get_store(url).stats()


@st.cache_data(ttl=5)
def sentiment_by_minute(url: str, since: datetime | None = None) -> pd.DataFrame:
    """Per minute of event time: volume and mean score (p_positive - p_negative)."""
    store = get_store(url)
    q = sa.select(items.c.ts, items.c.label, items.c.p_positive, items.c.p_negative)
    if since is not None:
        q = q.where(items.c.ts >= since)
    with store.engine.connect() as conn:
        df = pd.DataFrame(conn.execute(q).all(), columns=["ts", "label", "p_pos", "p_neg"])
    if df.empty:
        return pd.DataFrame(columns=["minute", "volume", "score", "negative_share"])
    df["minute"] = pd.to_datetime(df["ts"], utc=True).dt.floor("min")
    df["score"] = df["p_pos"] - df["p_neg"]
    df["neg"] = (df["label"] == "negative").astype(float)
    out = df.groupby("minute").agg(
        volume=("score", "size"), score=("score", "mean"), negative_share=("neg", "mean")
    )
    return out.reset_index()


@st.cache_data(ttl=5)
def latest_items(url: str, limit: int = 50) -> pd.DataFrame:
    store = get_store(url)
    q = (
        sa.select(
            items.c.ts,
            items.c.text,
            items.c.label,
            items.c.confidence,
            items.c.model_version,
            items.c.entities,
        )
        .order_by(items.c.seq.desc())
        .limit(limit)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    return pd.DataFrame(rows, columns=["ts", "text", "label", "confidence", "version", "entities"])
