"""Drift & models, for operators: what happened, how each version does, and the controls."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, context, data, ui
from stream import operations

st.title("Drift & models")
url = ui.store_url()
registry = context.current().registry
registry_url = context.current().operations.registry_url  # a shared registry's database
refresh = ui.live_toggle()


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


_PCT_COLUMNS = (
    "new data: candidate",
    "new data: serving",
    "old data: candidate",
    "old data: serving",
    "shadow agreement",
)


def _gate_rows(cards: list[dict]) -> pd.DataFrame:
    rows = []
    for c in cards:
        gate = c.get("gate") or {}
        new, old, shadow = gate.get("new") or {}, gate.get("old") or {}, gate.get("shadow") or {}
        rows.append(
            {
                "version": c["version"],
                "parent": c.get("parent"),
                "decision": c.get("decision") or c.get("kind"),
                "new data: candidate": new.get("candidate"),
                "new data: serving": new.get("serving"),
                "old data: candidate": old.get("candidate"),
                "old data: serving": old.get("serving"),
                "shadow agreement": shadow.get("agreement"),
                # 1.0 = as fine-tuned; less = blended with its parent's weights (the gate chose)
                "candidate weight": (gate.get("merge") or {}).get("weight"),
                "why not": "; ".join(gate.get("reasons") or []),
                "trigger": c.get("trigger"),
                "created": c.get("created_at"),
            }
        )
    return pd.DataFrame(rows)


@st.fragment(run_every=refresh)
@ui.survive_outages
def live() -> None:
    serving, cards = data.models(registry, registry_url)
    events = data.timeline(url)
    st.subheader("Timeline")
    if events.empty:
        st.info("No drift, retrain or promotion yet.")
    else:
        st.altair_chart(charts.timeline(events), width="stretch")
        with st.expander(f"All {len(events)} events"):
            st.dataframe(events, hide_index=True, width="stretch")

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Accuracy on incoming labels")
        lo, hi = data.time_bounds(url)
        step = data.bucket_seconds(lo, hi, target=30) if lo and hi else 60
        acc = data.accuracy_by_version(url, step)
        if acc.empty:
            st.info("No labelled items yet: accuracy shows once analysts' labels arrive.")
        else:
            st.altair_chart(charts.accuracy(acc), width="stretch")
            st.caption(f"Per {step} s of label time, by the version that scored the item.")
    with right:
        st.subheader(f"Serving: {serving or 'none'}")
        card = next((c for c in cards if c["version"] == serving), None)
        if card is None:
            st.info("No model serves yet (`moodwire bootstrap`, or the demo does it).")
        else:
            holdout = (card.get("metrics") or {}).get("holdout") or {}
            m1, m2, m3 = st.columns(3)
            m1.metric("held-out accuracy", _pct(holdout.get("accuracy")))
            m2.metric("macro-F1", _pct(holdout.get("macro_f1")))
            m3.metric("held-out items", holdout.get("n", "—"))
            st.caption(
                f"{card.get('kind') or '—'} · parent {card.get('parent') or '—'} · "
                f"created {ui.fmt_time(card.get('created_at'))} "
                f"by {card.get('created_by', '—')}"
            )
            with st.expander("Model card"):
                st.json(card)

    st.subheader("Candidates against the serving model")
    candidates = [c for c in cards if c.get("gate")]  # every fine-tuned version was gated
    if not candidates:
        st.caption("No candidate has been trained yet.")
    else:
        pct = st.column_config.NumberColumn(format="percent")
        st.dataframe(
            _gate_rows(candidates), hide_index=True, width="stretch",
            column_config={c: pct for c in _PCT_COLUMNS},
        )  # fmt: skip


live()

with st.expander("Audit log"):
    st.dataframe(data.audit(url), hide_index=True, width="stretch")

st.subheader("Controls")
if not ui.can("promote"):  # shown to operators; each action checks the role again
    st.caption("Operators retrain, approve, promote and roll back (sign in as one).")
    st.stop()
st.caption("Each runs as you, and is written to the audit log with why.")
serving, cards = data.models(registry, registry_url)
versions = [c["version"] for c in cards]
why = st.text_input("Why (for the audit log)", key="ops_why")
c1, c2, c3 = st.columns(3)
with c1:
    if st.button("Retrain now", help="ask the active learner to train a candidate now"):
        ui.act(operations.request_retrain, reason=why, success="Retrain requested.")
with c2:
    waiting = [c["version"] for c in cards if c.get("decision") == "await_approval"]
    choice = st.selectbox(
        "Version to serve", versions, index=versions.index(waiting[0]) if waiting else 0,
        key="ops_version", help="approve a candidate awaiting approval, or serve any version",
    ) if versions else None  # fmt: skip
    if st.button("Approve / promote", disabled=choice is None):
        ui.act(operations.promote, choice, reason=why, success=f"{choice} now serves.")
with c3:
    if st.button("Roll back", help="serve the version that served before the current one"):
        ui.act(operations.rollback, reason=why, success="Rolled back.")
