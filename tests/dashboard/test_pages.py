"""Every dashboard page, driven by Streamlit's AppTest over a real store (and broker).

Empty and populated stores render without exception; filters change what is
shown; every state-changing action refuses without the operator credential
and works, audited, with it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import read_all, settings_env
from streamlit.testing.v1 import AppTest

from learner.registry import Registry
from moodwire.settings import Settings
from moodwire.store import Store, encode_embedding

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/alerts.py", "views/models.py", "views/explore.py"]
TITLES = ["Overview", "Alerts", "Drift & models", "Explore"]
TOKEN = "op-s3cret"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _item(i: int, entity: str, label: str, topic: str, text: str) -> dict[str, Any]:
    p = {"negative": (0.8, 0.1, 0.1), "neutral": (0.1, 0.8, 0.1), "positive": (0.1, 0.1, 0.8)}
    neg, neu, pos = p[label]
    ts = T0 + timedelta(seconds=60 * i)
    vec = np.random.default_rng(i).normal(size=384).astype(np.float32)
    return {
        "id": f"it-{i}",
        "text": text,
        "ts": ts,
        "source": "wire" if i % 2 else "social",
        "entities": [entity],
        "meta": {},
        "label": label,
        "topic": topic,
        "p_negative": neg,
        "p_neutral": neu,
        "p_positive": pos,
        "confidence": max(neg, neu, pos),
        "model_version": "v1" if i < 200 else "v2",
        "neighbors": [{"id": f"it-{i - 1}", "similarity": 0.9, "label": "neutral"}] if i else [],
        "embedding": encode_embedding(vec / np.linalg.norm(vec)),
        "src_partition": 0,
        "src_offset": i,
        "kafka_ts": ts,
        "scored_at": ts,
    }


def _populate(store: Store, registry: Path) -> None:
    rows = []
    for i in range(300):
        if 240 <= i < 270:  # a late negative episode on INIT
            rows.append(
                _item(i, "INIT", "negative", "legal_regulatory", f"Initech sued over breach {i}")
            )
        else:
            entity = ("ACME", "GLBX", "INIT")[i % 3]
            label = ("negative", "neutral", "positive", "positive")[i % 4]
            topic = ("earnings", "markets")[i % 2]
            rows.append(_item(i, entity, label, topic, f"{entity} shares move on results {i}"))
    store.write_batch(rows, [])
    store.add_labels(
        [
            {"id": f"lab-{i}", "item_id": f"it-{i}", "text": None, "label": rows[i]["label"],
             "topic": None, "source": "analyst", "annotator": "ann", "ts": rows[i]["ts"]}
            for i in range(0, 300, 5)
        ]
    )  # fmt: skip
    store.upsert_alert(
        {
            "id": "al-init",
            "kind": "negative_surge",
            "scope": "entity",
            "entity": "INIT",
            "topic": None,
            "severity": "critical",
            "window_start": (T0 + timedelta(minutes=240)).isoformat(),
            "window_end": (T0 + timedelta(minutes=270)).isoformat(),
            "first_window_start": (T0 + timedelta(minutes=240)).isoformat(),
            "statistic": 7.5,
            "baseline": 0.25,
            "value": 1.0,
            "n": 30,
            "signals": {"negative_surge": {"statistic": 7.5}},
            "evidence": {
                "item_ids": [f"it-{i}" for i in range(240, 270)],
                "n": 30,
                "negatives": 30,
                "top": [
                    {
                        "id": "it-241",
                        "text": "Initech sued over breach 241",
                        "score": -0.7,
                        "label": "negative",
                        "ts": rows[241]["ts"].isoformat(),
                    }
                ],
            },  # fmt: skip
            "baseline_windows": [
                {"start": (T0 + timedelta(minutes=30 * k)).isoformat(), "n": 10, "negatives": 2}
                for k in range(8)
            ],
            "similar": [],
            "revision": 1,
            "details": {},
        }
    )
    store.upsert_alert(
        {
            "id": "al-drift", "kind": "drift", "scope": "stream", "severity": "warning",
            "window_start": (T0 + timedelta(minutes=200)).isoformat(),
            "window_end": (T0 + timedelta(minutes=201)).isoformat(),
            "first_window_start": (T0 + timedelta(minutes=200)).isoformat(),
            "statistic": 5.0, "baseline": 0.0, "value": 5.0, "n": 100, "signals": {},
            "evidence": {"item_ids": [], "n": 0, "top": []}, "baseline_windows": [],
            "revision": 1,
        }
    )  # fmt: skip
    store.record_drift(
        {"ts": T0 + timedelta(minutes=200), "detector": "adwin", "signal": "error_rate",
         "statistic": 0.2, "window": 100, "position": 200, "origin": "learner"}
    )  # fmt: skip
    reg = Registry(registry)

    def save(path: Path) -> None:
        (path / "weights.txt").write_text("not a model: the dashboard reads cards only")

    v1 = reg.write_version(save, {"kind": "bootstrap", "metrics": {"holdout": {"accuracy": 0.8}}})
    reg.promote(v1)
    gate = {"passed": True, "reasons": [], "new": {"n": 40, "serving": 0.6, "candidate": 0.8},
            "old": {"n": 80, "serving": 0.85, "candidate": 0.84}, "shadow": {"agreement": 0.7}}  # fmt: skip
    v2 = reg.write_version(
        save, {"kind": "incremental", "parent": v1, "gate": gate, "decision": "promote"}
    )
    reg.promote(v2)
    store.audit("learner", "promote", v2, "gate passed", {"previous": v1})


@pytest.fixture
def env(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The dashboard's settings: a fresh store and registry, the test's own topics."""
    s = settings.with_overrides(registry=tmp_path / "registry", operator_token=TOKEN)
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MOODWIRE_OPERATOR_TOKEN", TOKEN)
    return s


@pytest.fixture
def populated(env: Settings) -> Settings:
    _populate(Store(env.resolved_store_url()), env.resolved_registry())
    return env


def _open(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(page)
    return at.run()


def _descriptions(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec).get("description", "") for c in at.get("vega_lite_chart")]


def _sign_in(at: AppTest, token: str | None, actor: str = "dana") -> None:
    at.sidebar.text_input(key="actor").set_value(actor)
    if token is not None:
        at.sidebar.text_input(key="token").set_value(token)


@pytest.mark.parametrize(("page", "title"), list(zip(PAGES, TITLES, strict=True)))
def test_every_page_renders_on_an_empty_store(env: Settings, page: str, title: str) -> None:
    at = _open(page)
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [title]
    shown = " ".join(x.value for x in [*at.info, *at.caption])
    assert any(w in shown for w in ("No items yet", "No alerts", "No drift", "No items")), shown


@pytest.mark.parametrize(("page", "title"), list(zip(PAGES, TITLES, strict=True)))
def test_every_page_renders_on_a_populated_store(
    populated: Settings, page: str, title: str
) -> None:
    at = _open(page)
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [title]
    if page.endswith("overview.py"):
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["items scored"] == "300"
        descs = _descriptions(at)
        assert any("sentiment index of all items" in d and "300 items" in d for d in descs), descs
        assert any(d.startswith("entities that moved most: 3 entities") for d in descs), descs
        assert any("negative_surge on INIT" in m.value for m in at.markdown)
    elif page.endswith("alerts.py"):
        labels = [e.label for e in at.expander]
        assert any("negative_surge on INIT" in x for x in labels), labels
        assert any("against baseline 0.25 over 8 baseline windows" in d for d in _descriptions(at))
        assert any("Initech sued over breach 241" in m.value for m in at.markdown)
    elif page.endswith("models.py"):
        assert any(s.value == "Serving: v2" for s in at.subheader)
        descs = _descriptions(at)
        assert any(d.startswith("model timeline:") and "1 drift" in d for d in descs), descs
        assert any("accuracy on 60 labels by version: v1, v2" in d for d in descs), descs
        (gate,) = [d.value for d in at.dataframe if "decision" in d.value.columns]
        assert list(gate["version"]) == ["v2"] and gate["new data: candidate"][0] == 0.8
    else:
        assert len(at.dataframe[0].value) == 100  # the newest hundred of 300


def test_overview_follows_the_chosen_entity_and_range(populated: Settings) -> None:
    at = _open(PAGES[0])
    at.radio(key="ov_scope").set_value("an entity").run()
    at.selectbox(key="ov_entity").set_value("INIT").run()
    assert not at.exception
    descs = _descriptions(at)
    assert any(d.startswith("sentiment index of INIT:") and "120 items" in d for d in descs), descs
    at.sidebar.selectbox(key="range_preset").set_value("1h").run()
    descs = _descriptions(at)
    # The last hour before the newest item: minutes 240..299, INIT's 30 + 10 others.
    assert any(d.startswith("sentiment index of INIT:") and "40 items" in d for d in descs), descs


def test_alert_and_explore_filters_change_what_is_shown(populated: Settings) -> None:
    at = _open(PAGES[1])
    assert len(at.expander) == 2
    at.selectbox(key="al_kind").set_value("drift").run()
    assert [e.label.split(" · ")[0] for e in at.expander] == ["🟠 drift on stream"]
    at.selectbox(key="al_kind").set_value("any").run()
    at.text_input(key="al_entity").set_value("$init").run()
    assert len(at.expander) == 1 and "INIT" in at.expander[0].label

    ex = _open(PAGES[3])
    ex.text_input(key="ex_query").set_value("sued over breach").run()
    assert len(ex.dataframe[0].value) == 30
    ex.selectbox(key="ex_source").set_value("wire").run()
    assert len(ex.dataframe[0].value) == 15
    ex.selectbox(key="ex_label").set_value("positive").run()
    assert not ex.dataframe and any("Nothing matches" in i.value for i in ex.info)


def test_model_actions_refuse_without_the_credential_and_work_with_it(
    populated: Settings,
) -> None:
    store = Store(populated.resolved_store_url())
    registry = Registry(populated.resolved_registry())
    at = _open(PAGES[2])
    _sign_in(at, None)
    at.text_input(key="ops_why").set_value("v2 misreads chatter")
    at.button[[b.label for b in at.button].index("Roll back")].click().run()
    assert any("Refused" in e.value and "credential" in e.value for e in at.error)
    assert registry.serving() == "v2" and not store.audit_rows("rollback")

    _sign_in(at, "wrong")
    at.button[[b.label for b in at.button].index("Roll back")].click().run()
    assert any("wrong operator credential" in e.value for e in at.error)
    assert registry.serving() == "v2"

    _sign_in(at, TOKEN)
    at.button[[b.label for b in at.button].index("Roll back")].click().run()
    assert not at.exception and any("Rolled back" in s.value for s in at.success)
    assert registry.serving() == "v1"
    (row,) = store.audit_rows("rollback")
    assert (row["actor"], row["target"], row["reason"]) == ("dana", "v1", "v2 misreads chatter")

    at.selectbox(key="ops_version").set_value("v2")
    at.button[[b.label for b in at.button].index("Approve / promote")].click().run()
    assert registry.serving() == "v2" and store.audit_rows("promote")[-1]["actor"] == "dana"

    # A retrain request reaches the learner's control topic on the real broker.
    at.button[[b.label for b in at.button].index("Retrain now")].click().run()
    assert any("Retrain requested" in s.value for s in at.success), [e.value for e in at.error]
    sent = [
        json.loads(r.value) for r in read_all(populated.bootstrap_servers, populated.topics.control)
    ]
    assert any(m["action"] == "retrain" and m["actor"] == "dana" for m in sent), sent
    assert store.audit_rows("retrain")[-1]["reason"] == "v2 misreads chatter"


def test_alert_actions_need_the_credential(populated: Settings) -> None:
    store = Store(populated.resolved_store_url())
    at = _open(PAGES[1])
    _sign_in(at, None)
    at.button(key="ack-al-init").click().run()
    assert any("Refused" in e.value for e in at.error)
    assert store.alert_rows(kind="negative_surge")[0]["acknowledged_by"] is None

    _sign_in(at, TOKEN, actor="risk-desk")
    at.button(key="ack-al-init").click().run()
    assert store.alert_rows(kind="negative_surge")[0]["acknowledged_by"] == "risk-desk"
    at.button(key="mute-al-init").click().run()
    assert store.alert_rows(kind="negative_surge")[0]["muted_until"] is not None
    # Muted alerts leave the list unless asked for.
    at.run()
    assert not any("INIT" in e.label for e in at.expander)
    assert {r["action"] for r in store.audit_rows()} >= {"acknowledge", "mute"}


def test_a_correction_needs_the_credential_and_shows_at_once(populated: Settings) -> None:
    store = Store(populated.resolved_store_url())
    at = _open(PAGES[3])
    at.text_input(key="ex_query").set_value("shares move on results 7").run()
    texts = list(at.dataframe[0].value["text"])
    assert len(texts) == 11  # results 7 and 70-79
    row = texts.index("GLBX shares move on results 7")
    # Select that row, as a click in the grid does.
    at.session_state["ex_table"] = {"selection": {"rows": [row], "columns": []}}
    at.run()
    assert any("Correct it" in m.value for m in at.markdown), [m.value for m in at.markdown]
    before = len(store.labels_after(0))
    at.selectbox(key="fix_label").set_value("negative")
    at.selectbox(key="fix_topic").set_value("legal_regulatory")
    at.button[0].click().run()  # the form's submit button, no credential
    assert any("Refused" in e.value for e in at.error)
    assert len(store.labels_after(0)) == before

    _sign_in(at, TOKEN, actor="analyst-ann")
    at.selectbox(key="fix_label").set_value("negative")
    at.selectbox(key="fix_topic").set_value("legal_regulatory")
    at.button[0].click().run()
    assert any("Correction sent" in s.value for s in at.success), [e.value for e in at.error]
    labels = store.labels_after(0)
    assert len(labels) == before + 1
    new = labels[-1]
    assert (new["item_id"], new["label"], new["topic"], new["annotator"]) == (
        "it-7", "negative", "legal_regulatory", "analyst-ann"
    )  # fmt: skip
    sent = [
        json.loads(r.value) for r in read_all(populated.bootstrap_servers, populated.topics.labels)
    ]
    assert any(m["item_id"] == "it-7" and m["label"] == "negative" for m in sent), sent
    # Visible at once: the table marks the item corrected, with the new label and topic.
    at.run()
    shown = at.dataframe[0].value.iloc[row]
    assert shown["text"] == "GLBX shares move on results 7"
    assert (shown["label"], shown["topic"], bool(shown["corrected"])) == (
        "negative", "legal_regulatory", True
    )  # fmt: skip
