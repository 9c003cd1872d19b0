"""Overview, for risk teams: the sentiment index, the movers and the live alert feed."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import charts, data, ui

st.title("Overview")
url = ui.store_url()
chosen = ui.time_range(url, default="all")
refresh = ui.live_toggle()

scope_label = st.radio(
    "Sentiment of", ["all items", "an entity", "a topic"], horizontal=True, key="ov_scope"
)
scope, key, what = "all", "", "all items"
if scope_label == "an entity":
    choices = data.entity_choices(url)
    key = st.selectbox("Entity", choices, key="ov_entity") if choices else ""
    scope, what = "entity", key
elif scope_label == "a topic":
    choices = data.topic_choices(url)
    key = st.selectbox("Topic", choices, key="ov_topic") if choices else ""
    scope, what = "topic", key


@st.fragment(run_every=refresh)
@ui.survive_outages
def live() -> None:
    counts = data.headline_counts(url)
    cols = st.columns(5)
    cols[0].metric("items scored", f"{counts['items']:,}")
    cols[1].metric("negative share", f"{counts['negative'] / max(1, counts['items']):.0%}")
    cols[2].metric("open alerts", counts["open_alerts"])
    cols[3].metric("drift events", counts["drift_events"])
    cols[4].metric("model versions seen", counts["versions"])
    window = chosen.resolve(url)
    if window is None:
        st.info(
            "No items yet. Start a worker and a feed, or `moodwire demo`: "
            "the first trends show here within a minute."
        )
        return
    start, end = window
    ui.range_caption(window)
    left, right = st.columns([3, 2])
    with left:
        st.subheader(f"Sentiment index — {what}")
        if scope != "all" and not key:
            st.info(f"No {scope} is known yet.")
        else:
            bucket = data.bucket_seconds(start, end)
            series = data.sentiment_series(url, start, end, bucket, scope, key)
            if series.empty:
                st.info(f"No items on {what} in this range.")
            else:
                score, volume = charts.sentiment_index(series, what, start, end)
                st.altair_chart(score, width="stretch", height=260)
                st.altair_chart(volume, width="stretch", height=130)
                st.caption(f"{bucket} s buckets of event time; volume beneath.")
    with right:
        st.subheader("Moved most")
        moved = data.movers(url, start, end)
        if moved.empty:
            st.info("No entity has enough items in this range.")
        else:
            st.altair_chart(charts.movers(moved), width="stretch", height=max(140, 28 * len(moved)))
            st.caption("Mean sentiment in the range against the range of equal length before it.")
    st.subheader("Live alerts")
    alerts = data.alert_list(url, limit=15)
    if not alerts:
        st.caption("No alerts yet.")
    for a in alerts:
        key_ = a.get("entity") or a.get("topic") or a["scope"]
        top = (a["evidence"].get("top") or [{}])[0].get("text", "")
        icon = ui.severity_dot(a["severity"])
        ack = f" · acknowledged by {a['acknowledged_by']}" if a.get("acknowledged_by") else ""
        st.markdown(
            f"{icon} **{a['kind']} on {ui.md(key_)}** · z={a['statistic']:+.1f} "
            f"(baseline {a['baseline']:.2f}, n={a['n']}) · window {ui.fmt_time(a['window_end'])}"
            f"{ack}" + (f"  \n&nbsp;&nbsp;&nbsp;&nbsp;e.g. _{ui.md(top[:120])}_" if top else "")
        )
    # By its own path: the serving script, not this package, is where relative paths start.
    st.page_link(str(Path(__file__).with_name("alerts.py")), label="All alerts, with evidence →")


live()
