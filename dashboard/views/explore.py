"""Explore, for analysts: search past items by meaning or text, see neighbours, correct labels."""

from __future__ import annotations

import streamlit as st

from dashboard import context, data, ui
from stream import operations

LABELS = ["negative", "neutral", "positive"]

st.title("Explore")
url = ui.store_url()
ctx = context.current()
window = ui.time_range(url, default="all").resolve(url)

query = st.text_input("Search", key="ex_query", placeholder="e.g. bank downgraded on credit fears")
mode = st.radio("Match", ["by text", "by meaning"], horizontal=True, key="ex_mode",
                help="by meaning: the nearest items in the FAISS index, whatever their words")  # fmt: skip
f1, f2, f3, f4 = st.columns(4)
entity = f1.selectbox("Entity", [""] + data.entity_choices(url), key="ex_entity")
topic = f2.selectbox("Topic", [""] + data.topic_choices(url), key="ex_topic")
label = f3.selectbox("Label", [""] + LABELS, key="ex_label")
source = f4.selectbox("Source", [""] + data.sources(url), key="ex_source")
start, end = window if window else (None, None)

if mode == "by meaning" and query.strip():
    found = data.search_meaning(url, ctx.index_dir, query.strip(), k=100)
    if not found.empty:  # the filters apply to the nearest hundred
        keep = found["ts"].notna()
        if entity:
            keep &= found["entities"].apply(lambda e: entity in (e or []))
        for col, value in (("topic", topic), ("label", label), ("source", source)):
            if value:
                keep &= found[col] == value
        found = found[keep]
else:
    found = data.search_text(
        url, query, entity or None, topic or None, label or None, source or None, start, end
    )

st.caption(f"{len(found)} items" + (" (newest first)" if mode == "by text" else " (closest first)"))
if found.empty:
    st.info("Nothing matches." if query or entity or topic or label or source else "No items yet.")
    st.stop()

view = found.assign(
    label=found["corrected_label"].fillna(found["label"]),
    topic=found["corrected_topic"].fillna(found["topic"]),
    corrected=found["corrected_label"].notna() | found["corrected_topic"].notna(),
)
cols = ["ts", "text", "label", "topic", "confidence", "entities", "source", "model_version",
        "corrected"] + (["similarity"] if "similarity" in view else [])  # fmt: skip
picked = st.dataframe(
    view[cols], hide_index=True, width="stretch", on_select="rerun",
    selection_mode="single-row", key="ex_table",
)  # fmt: skip
rows = picked.selection.rows if picked and picked.selection else []
item_id = str(view.iloc[rows[0]]["id"]) if rows else None
if item_id is None:
    st.caption("Select a row to see its neighbours and to correct it.")
    st.stop()

it = data.item(url, item_id)
if it is None:
    st.warning("That item is no longer in the store.")
    st.stop()
fix = data.corrections(url, (item_id,)).get(item_id, {})
st.subheader("Item")
st.markdown(f"> {ui.md(it['text'])}")
st.markdown(
    f"scored **{it['label']}** ({it['confidence']:.0%}) by {it['model_version']} · topic "
    f"**{it['topic'] or '—'}** · {ui.fmt_time(it['ts'])} · {ui.md(it['source'] or '')}"
    + (f" · corrected to **{fix.get('label') or it['label']}** / **{fix.get('topic') or it['topic']}**" if fix else "")
)  # fmt: skip

version = it["model_version"]
if ctx.open_explainer is not None and version:
    # Computed on demand (the model loads on the first click), then cached per (version, text).
    if st.button("Explain", key="ex_explain", icon=":material/lightbulb:",
                 help=f"why {version} gave this text its label: each word's weight (integrated "
                 "gradients); loads the model on first use, so it takes a few seconds"):  # fmt: skip
        st.session_state["ex_explained"] = item_id
    if st.session_state.get("ex_explained") == item_id:
        try:
            why = data.explanation(ctx.registry, version, it["text"])
        except context.ExplainError as exc:
            st.error(f"Cannot explain it: {exc}")
        else:
            st.markdown(ui.weighted_words(why["words"]))
            strongest = sorted(why["words"], key=lambda w: -abs(w["attribution"]))[:3]
            st.caption(
                f"Why {version} says **{why['label']}** ({why['probability']:.0%}): green words "
                f"pushed towards it, red away, bold the most. Most weight: "
                + ", ".join(f"{ui.md(w['word'])} ({w['attribution']:+.2f})" for w in strongest)
                + f". Integrated gradients, {why['n_steps']} steps, from a text of pad tokens "
                f"({why['baseline_probability']:.0%}); delta {why['delta']:+.3f}."
            )

left, right = st.columns([3, 2])
with left:
    st.markdown("**Neighbours** (similar past items when it was scored)")
    nb = it.get("neighbors") or []
    if not nb:
        st.caption("None: it was among the first items.")
    texts = data.items_by_ids(url, tuple(n["id"] for n in nb))
    for n in nb:
        t = texts.get(n["id"])
        st.markdown(
            f"- {ui.md((t or {}).get('text', n['id'])[:160])} · _{n.get('label')}_ "
            f"(similarity {n['similarity']:.2f})"
        )
with right:
    st.markdown("**Correct it** (sent to `news.labels`; the learner learns from it)")
    if not ui.can("correct"):  # shown to analysts; the correction checks again
        st.caption("Analysts and operators correct labels and topics (sign in as one).")
        st.stop()
    with st.form(f"fix-{item_id}"):
        new_label = st.selectbox("Label", [""] + LABELS, key="fix_label")
        taxonomy = ctx.taxonomy
        new_topic = st.selectbox("Topic", [""] + data.taxonomy_topics(taxonomy), key="fix_topic")
        reason = st.text_input("Why (for the audit log)", key="fix_why")
        if st.form_submit_button("Send correction"):
            if not new_label and not new_topic:
                st.error("Choose a label or a topic.")
            else:
                ui.act(
                    operations.correct, item_id, label=new_label or None,
                    topic=new_topic or None, reason=reason, success="Correction sent and stored.",
                )  # fmt: skip
