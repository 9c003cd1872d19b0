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


def sentiment_index(df: pd.DataFrame, what: str) -> alt.VConcatChart:
    """Mean sentiment score per bucket over volume bars beneath."""
    desc = f"sentiment index of {what}: {len(df)} buckets, {int(df['volume'].sum()):,} items"
    base = alt.Chart(df).encode(x=alt.X("time:T", title="event time (UTC)"))
    score = (
        base.mark_line(point=len(df) < 60)
        .encode(
            y=alt.Y("score:Q", title="sentiment (p_pos − p_neg)", scale=alt.Scale(domain=[-1, 1])),
            tooltip=[
                alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S"),
                alt.Tooltip("score:Q", format="+.2f"),
                alt.Tooltip("volume:Q"),
                alt.Tooltip("negative_share:Q", format=".0%"),
            ],
        )
        .properties(height=230)
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(strokeDash=[4, 4]).encode(y="y:Q")
    volume = (
        base.mark_bar(opacity=0.6)
        .encode(y=alt.Y("volume:Q", title="items"), tooltip=["time:T", "volume:Q"])
        .properties(height=90)
    )
    return alt.vconcat(score + zero, volume).properties(description=desc)


def movers(df: pd.DataFrame) -> alt.Chart:
    """Change of each entity's mean score against the window before, as bars."""
    desc = f"entities that moved most: {len(df)} entities" + (
        f", largest move {df.iloc[0]['entity']} {df.iloc[0]['change']:+.2f}" if len(df) else ""
    )
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("change:Q", title="change in sentiment vs the window before"),
            y=alt.Y("entity:N", sort=alt.EncodingSortField("change", op="min"), title=None),
            color=alt.condition("datum.change < 0", alt.value("#d62728"), alt.value("#2ca02c")),
            tooltip=[
                "entity:N",
                "n:Q",
                alt.Tooltip("score:Q", format="+.2f"),
                alt.Tooltip("score_before:Q", format="+.2f"),
                alt.Tooltip("change:Q", format="+.2f"),
            ],
        )  # fmt: skip
        .properties(height=max(120, 22 * len(df)), description=desc)
    )


def alert_windows(alert: dict[str, Any]) -> alt.LayerChart:
    """The alert's statistic in its window against the baseline windows before it."""
    kind = alert["kind"]
    rows = []
    for w in alert.get("baseline_windows") or []:
        n = max(1, int(w.get("n", 0)))
        value = w.get("negatives", 0) / n if kind == "negative_surge" else w.get("n", 0)
        if kind == "sentiment_shift":
            value = w.get("mean_score")
        rows.append({"start": w["start"], "value": value, "window": "baseline", "n": w.get("n")})
    rows.append(
        {
            "start": alert["window_start"],
            "value": alert["value"],
            "window": "alert",
            "n": alert.get("n"),
        }
    )
    df = pd.DataFrame(rows)
    df["start"] = pd.to_datetime(df["start"], utc=True)
    title = {
        "negative_surge": "negative share",
        "volume_spike": "items",
        "sentiment_shift": "mean sentiment",
    }.get(kind, "value")
    desc = (
        f"{kind} on {alert.get('entity') or alert.get('topic') or alert['scope']}: {title} "
        f"{alert['value']:.3g} against baseline {alert['baseline']:.3g} over "
        f"{len(df) - 1} baseline windows"
    )
    bars = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("start:T", title="window start"),
            y=alt.Y("value:Q", title=title),
            color=alt.Color(
                "window:N",
                scale=alt.Scale(domain=["baseline", "alert"], range=["#9e9e9e", "#d62728"]),
            ),
            tooltip=["start:T", alt.Tooltip("value:Q", format=".3g"), "n:Q"],
        )
    )
    base = (
        alt.Chart(pd.DataFrame({"baseline": [alert["baseline"]]}))
        .mark_rule(strokeDash=[4, 4])
        .encode(y="baseline:Q")
    )
    return (bars + base).properties(height=160, description=desc)


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
            x=alt.X("time:T", title="time (UTC)"),
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
            x=alt.X("time:T", title="label time (UTC)"),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            color=alt.Color("version:N"),
            tooltip=["time:T", "version:N", "labels:Q", alt.Tooltip("accuracy:Q", format=".1%")],
        )
        .properties(height=220, description=desc)
    )
