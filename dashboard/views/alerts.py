"""Alerts: each with its evidence, its statistic against the baseline, similar past episodes."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, ui
from stream import operations

st.title("Alerts")
url = ui.store_url()
chosen = ui.time_range(url, default="all")
refresh = ui.live_toggle()

c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
kind = c1.selectbox(
    "Kind", ["any", "negative_surge", "sentiment_shift", "volume_spike", "drift"], key="al_kind"
)
entity = c2.text_input("Entity (e.g. ACME)", key="al_entity").strip().lstrip("$") or None
show_acked = c3.toggle("Acknowledged", value=True, key="al_acked")
show_muted = c4.toggle("Muted", value=False, key="al_muted")


def _alert(a: dict, expanded: bool) -> None:
    key = a.get("entity") or a.get("topic") or a["scope"]
    icon = "▲" if a["severity"] == "critical" else "△"
    state = (
        " · muted"
        if a.get("muted")
        else (f" · acknowledged by {a['acknowledged_by']}" if a.get("acknowledged_by") else "")
    )
    title = (
        f"{icon} {a['kind']} on {key} · z={a['statistic']:+.1f} · "
        f"{ui.fmt_time(a['window_start'])} → {ui.fmt_time(a['window_end'])}{state}"
    )
    with st.expander(title, expanded=expanded):
        left, right = st.columns([3, 2])
        with left:
            st.markdown(
                f"**{a['severity']}** · value {a['value']:.3g} against baseline "
                f"{a['baseline']:.3g} over {len(a.get('baseline_windows') or [])} windows · "
                f"n={a['n']} · revision {a['revision']}"
            )
            if a.get("baseline_windows"):
                st.altair_chart(charts.alert_windows(a), width="stretch")
            signals = a.get("signals") or {}
            if signals:
                st.caption(
                    "Signals: "
                    + "; ".join(f"{k} z={v['statistic']:+.2f}" for k, v in signals.items())
                )
        with right:
            st.markdown("**Evidence** (most negative first)")
            top = a["evidence"].get("top") or []
            if not top:
                st.caption("No items of its own (a drift alert: see Drift & models).")
            for t in top:
                st.markdown(f"- {ui.md(t['text'][:200])} · _{t['label']}_ ({t['score']:+.2f})")
            st.markdown("**Similar past episodes**")
            similar = a.get("similar") or []
            if not similar:
                st.caption("None found in the index.")
            for s in similar[:5]:
                ex = (s.get("examples") or [{}])[0].get("text", "")
                st.markdown(
                    f"- {s['day']}: {s['n']} similar items, {s['negative_share']:.0%} negative "
                    f"(similarity {s['similarity']:.2f})"
                    + (f" · e.g. {ui.md(ex[:120])}" if ex else "")
                )
        if not ui.can("acknowledge"):  # shown to operators; each action checks again
            st.caption("Operators acknowledge and mute alerts (sign in as one).")
            return
        a1, a2, a3 = st.columns([1, 1, 2])
        reason = a3.text_input("Why (for the audit log)", key=f"why-{a['id']}")
        if a1.button("Acknowledge", key=f"ack-{a['id']}"):
            ui.act(operations.acknowledge, a["id"], reason=reason, success="Acknowledged.")
        hours = a2.number_input("Mute hours", 1, 24 * 30, 24, key=f"hours-{a['id']}")
        if a2.button("Mute", key=f"mute-{a['id']}"):
            ui.act(
                operations.mute, a["id"], hours=float(hours), reason=reason,
                success=f"Muted for {hours} h.",
            )  # fmt: skip


@st.fragment(run_every=refresh)
@ui.survive_outages
def live() -> None:
    window = chosen.resolve(url)
    since = window[0] if window else None
    rows = data.alert_list(
        url,
        since=since,
        kind=None if kind == "any" else kind,
        entity=entity,
        include_muted=show_muted,
        include_acknowledged=show_acked,
    )
    # A notification links here with ?alert=<id>: that alert opens first, whatever the filters.
    linked_id = st.query_params.get("alert")
    if linked_id:
        linked = data.alert_by_id(url, linked_id)
        if linked is None:
            st.warning(f"No alert {linked_id[:64]!r} in this store.")
        else:
            st.subheader("Linked alert")
            _alert(linked, expanded=True)
            rows = [a for a in rows if a["id"] != linked_id]
            st.subheader("All alerts")
    st.caption(f"{len(rows)} alerts, newest window first.")
    if not rows:
        st.info("No alerts match. Alerts appear when a window closes with a surge, a shift, "
                "a volume spike or drift.")  # fmt: skip
    # The newest alert with items of its own opens, with its chart and evidence.
    first = None if linked_id else next((a["id"] for a in rows if a.get("baseline_windows")), None)
    for a in rows:
        _alert(a, expanded=a["id"] == first)


live()
