"""Moodwire dashboard — overview (``streamlit run dashboard/app.py`` or ``moodwire demo``)."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data

st.set_page_config(page_title="Moodwire", layout="wide")
st.title("Moodwire")
st.caption("Sentiment of the live financial text stream")


def main() -> None:
    url = data.settings().resolved_store_url()
    stats = data.stats(url)
    cols = st.columns(4)
    cols[0].metric("items scored", stats["items"])
    cols[1].metric("rejected (dead-lettered)", stats["rejected"])
    cols[2].metric("model versions", len(stats["by_model_version"]))
    cols[3].metric(
        "negative share", f"{stats['by_label'].get('negative', 0) / max(1, stats['items']):.0%}"
    )
    df = data.sentiment_by_minute(url)
    if df.empty:
        st.info("No items yet. Start a worker and a feed (or `moodwire demo`).")
    else:
        st.subheader("Sentiment index")
        st.altair_chart(charts.sentiment_index(df), use_container_width=True)
    st.subheader("Latest items")
    st.dataframe(data.latest_items(url), use_container_width=True, hide_index=True)
    st.caption("Refreshes every 5 s.")


@st.fragment(run_every=5)
def live() -> None:
    main()


live()
