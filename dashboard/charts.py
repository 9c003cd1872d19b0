"""Pure chart builders: data frames in, Altair charts out."""

from __future__ import annotations

import altair as alt
import pandas as pd


def sentiment_index(df: pd.DataFrame) -> alt.Chart:
    """Mean sentiment score per minute over volume bars."""
    base = alt.Chart(df).encode(x=alt.X("minute:T", title="event time"))
    score = (
        base.mark_line(point=True)
        .encode(
            y=alt.Y("score:Q", title="sentiment (p_pos − p_neg)", scale=alt.Scale(domain=[-1, 1])),
            tooltip=["minute:T", "score:Q", "volume:Q", "negative_share:Q"],
        )
        .properties(height=220)
    )
    volume = (
        base.mark_bar(opacity=0.6).encode(y=alt.Y("volume:Q", title="items")).properties(height=100)
    )
    return alt.vconcat(score, volume)
