"""Pure chart builders: data frames in, Altair charts out.

Every chart carries a ``description`` built from its data (what it shows and
how much): screen readers and the browser tests read it.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

LABEL_COLORS = alt.Scale(
    domain=["negative", "neutral", "positive"], range=["#d62728", "#9e9e9e", "#2ca02c"]
)


def _time_x(field: str, title: str | None, times: Any, domain: list[str] | None = None) -> alt.X:
    """A UTC time axis with 24-hour labels (Vega's default is local, 12-hour time).

    The label format follows the span: seconds within a few minutes, dates past two days.
    """
    ts = pd.to_datetime(pd.Series(list(times)), utc=True) if len(times) else pd.Series([])
    span = (ts.max() - ts.min()).total_seconds() if len(ts) > 1 else 0.0
    if domain:
        span = (pd.Timestamp(domain[1]) - pd.Timestamp(domain[0])).total_seconds()
    fmt = "%H:%M:%S" if span < 600 else ("%H:%M" if span < 2 * 86400 else "%m-%d %H:%M")
    if span == 0 and len(ts):  # everything in one instant: pad, or the axis collapses
        t = ts.iloc[0]
        domain = [
            (t - pd.Timedelta(seconds=30)).isoformat(),
            (t + pd.Timedelta(seconds=30)).isoformat(),
        ]
    scale = alt.Scale(type="utc", domain=domain) if domain else alt.Scale(type="utc")
    return alt.X(
        f"{field}:T", title=title, scale=scale, axis=alt.Axis(format=fmt, labelOverlap=True)
    )


def sentiment_index(
    df: pd.DataFrame, what: str, start: Any = None, end: Any = None
) -> tuple[alt.LayerChart, alt.Chart]:
    """Mean sentiment score per bucket, and the volume bars to show beneath it.

    Two charts on the same time domain (``start``..``end``), so they line up
    whatever the container's width.
    """
    desc = f"sentiment index of {what}: {len(df)} buckets, {int(df['volume'].sum()):,} items"
    domain = [pd.Timestamp(start).isoformat(), pd.Timestamp(end).isoformat()] if start else None
    x = _time_x("time", None, df["time"], domain)
    base = alt.Chart(df).encode(x=x)
    score = base.mark_line(point=len(df) < 60).encode(
        y=alt.Y("score:Q", title="sentiment (p_pos − p_neg)", scale=alt.Scale(domain=[-1, 1])),
        tooltip=[
            alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S"),
            alt.Tooltip("score:Q", format="+.2f"),
            alt.Tooltip("volume:Q"),
            alt.Tooltip("negative_share:Q", format=".0%"),
        ],
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(strokeDash=[4, 4]).encode(y="y:Q")
    volume = (
        base.mark_bar(opacity=0.6)
        .encode(
            x=x.title("event time (UTC)"),
            y=alt.Y("volume:Q", title="items"),
            tooltip=["time:T", "volume:Q"],
        )
        .properties(
            height=100,
            description=f"volume of {what}: {int(df['volume'].sum()):,} items in {len(df)} buckets",
        )
    )
    return (score + zero).properties(height=240, description=desc), volume


def movers(df: pd.DataFrame) -> alt.Chart:
    """Change of each entity's mean score against the window before, as bars."""
    desc = f"entities that moved most: {len(df)} entities" + (
        f", largest move {df.iloc[0]['entity']} {df.iloc[0]['change']:+.2f}" if len(df) else ""
    )
    order = list(df.assign(size=df["change"].abs()).sort_values("size", ascending=False)["entity"])
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("change:Q", title="change in sentiment vs the window before"),
            y=alt.Y(
                "entity:N",
                sort=order,
                title=None,
                axis=alt.Axis(labelOverlap=False),
            ),
            color=alt.condition("datum.change < 0", alt.value("#d62728"), alt.value("#2ca02c")),
            tooltip=[
                "entity:N",
                "n:Q",
                alt.Tooltip("score:Q", format="+.2f"),
                alt.Tooltip("score_before:Q", format="+.2f"),
                alt.Tooltip("change:Q", format="+.2f"),
            ],
        )  # fmt: skip
        .properties(height=max(120, 26 * len(df)), description=desc)
    )


def alert_windows(alert: dict[str, Any]) -> alt.LayerChart:
    """The alert's statistic in its window against the baseline windows before it.

    A negative surge shows the negative share, a sentiment shift the mean score,
    a volume spike the key's share of the stream's items (what the rule judges).
    """
    kind = alert["kind"]
    ev = alert.get("evidence") or {}
    by_share = kind == "volume_spike" and "stream_n" in ev  # older alerts: counts only

    def share(n: float, total: int | None) -> float | None:
        return n / total if by_share and total else (None if by_share else n)

    rows = []
    for w in alert.get("baseline_windows") or []:
        n = int(w.get("n", 0))
        if kind == "negative_surge":
            value = w.get("negatives", 0) / n if n else None
        elif kind == "sentiment_shift":
            value = w.get("mean_score")
        else:
            value = share(n, w.get("stream_n"))
        rows.append({"start": w["start"], "value": value, "window": "baseline", "n": n})
    value, baseline = alert["value"], alert["baseline"]
    if kind == "volume_spike":  # value and baseline are counts: observed and expected
        total = ev.get("stream_n")
        value, baseline = share(value, total), share(baseline, total)
    rows.append(
        {"start": alert["window_start"], "value": value, "window": "alert", "n": alert.get("n")}
    )
    df = pd.DataFrame(rows)
    df["start"] = pd.to_datetime(df["start"], utc=True)
    title = {
        "negative_surge": "negative share",
        "volume_spike": "share of the stream's items" if by_share else "items",
        "sentiment_shift": "mean sentiment",
    }.get(kind, "value")
    shown = "n/a" if value is None else f"{value:.3g}"
    against = "n/a" if baseline is None else f"{baseline:.3g}"
    desc = (
        f"{kind} on {alert.get('entity') or alert.get('topic') or alert['scope']}: {title} "
        f"{shown} against baseline {against} over {len(df) - 1} baseline windows"
    )
    bars = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=_time_x("start", "window start (UTC)", df["start"]),
            y=alt.Y("value:Q", title=title),
            color=alt.Color(
                "window:N",
                scale=alt.Scale(domain=["baseline", "alert"], range=["#9e9e9e", "#d62728"]),
            ),
            tooltip=["start:T", alt.Tooltip("value:Q", format=".3g"), "n:Q"],
        )
    )
    if baseline is None:
        return bars.properties(height=160, description=desc)
    line = (
        alt.Chart(pd.DataFrame({"baseline": [baseline]}))
        .mark_rule(strokeDash=[4, 4])
        .encode(y="baseline:Q")
    )
    return (bars + line).properties(height=160, description=desc)


def timeline(df: pd.DataFrame) -> alt.Chart:
    """Drift events, retrains, candidates, promotions and rollbacks on one time axis."""
    counts = df["event"].value_counts().to_dict() if len(df) else {}
    desc = "model timeline: " + (
        ", ".join(f"{n} {e}" for e, n in sorted(counts.items())) if counts else "no events"
    )
    return (
        alt.Chart(df)
        .mark_point(filled=True, size=110)
        .encode(
            x=_time_x("time", "time (UTC)", df["time"]),
            y=alt.Y("event:N", title=None),
            color=alt.Color("event:N", legend=None),
            shape=alt.Shape("event:N", legend=None),
            tooltip=["time:T", "event:N", "what:N", "who:N", "version:N"],
        )
        .properties(height=200, description=desc)
    )


def accuracy(df: pd.DataFrame) -> alt.Chart:
    """Accuracy on incoming labels over time, one line per model version."""
    versions = sorted(df["version"].unique()) if len(df) else []
    desc = f"accuracy on {int(df['labels'].sum()) if len(df) else 0:,} labels by version: " + (
        ", ".join(versions) or "none"
    )
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=_time_x("time", "label time (UTC)", df["time"]),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            color=alt.Color("version:N"),
            tooltip=["time:T", "version:N", "labels:Q", alt.Tooltip("accuracy:Q", format=".1%")],
        )
        .properties(height=220, description=desc)
    )
