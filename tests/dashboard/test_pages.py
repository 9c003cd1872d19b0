"""Every dashboard page, driven by Streamlit's AppTest over a real store (and broker).

Empty and populated stores render without exception; filters change what is
shown; every state-changing action refuses without the operator credential
and works, audited, with it: each role sees and can do what it should, and an
action refused (hidden, or re-checked after a demotion) never reaches the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import populate_dashboard_store, read_all, settings_env
from streamlit.testing.v1 import AppTest

from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store
from stream.access import hash_password, os_principal, set_role

APP = str(Path(__file__).resolve().parents[2] / "moodwire" / "dashboard_app.py")
PAGES = [f"../dashboard/views/{name}.py" for name in ("overview", "alerts", "models", "explore")]
TITLES = ["Overview", "Alerts", "Drift & models", "Explore"]
PASSWORD = "dashboard-test-password"
_HASH = hash_password(PASSWORD)  # once: Argon2 is slow on purpose
USERS = {"vera": "viewer", "ann": "analyst", "dana": "operator", "ada": "admin"}


@pytest.fixture
def env(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The dashboard's settings: a fresh store (one user of each role) and registry, the
    test's own topics."""
    s = settings.with_overrides(registry=tmp_path / "registry")
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    store = Store(s.resolved_store_url())
    with store.engine.begin() as conn:
        for name, role in USERS.items():
            store.add_user_in(conn, name, role, _HASH, None)
    return s


@pytest.fixture
def populated(env: Settings) -> Settings:
    populate_dashboard_store(Store(env.resolved_store_url()), env.resolved_registry())
    return env


def _open(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(page)
    return at.run()


def _descriptions(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec).get("description", "") for c in at.get("vega_lite_chart")]


def _sign_in(at: AppTest, name: str, password: str = PASSWORD) -> AppTest:
    at.sidebar.text_input(key="sign_in_name").set_value(name)
    at.sidebar.text_input(key="sign_in_password").set_value(password)
    next(b for b in at.sidebar.button if b.label == "Sign in").click().run()
    return at


def _labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


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
    assert [e.label.split(" · ")[0] for e in at.expander] == ["△ drift on stream"]
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


def test_without_sign_in_the_password_form_shows_and_no_action_does(env: Settings) -> None:
    at = _open(PAGES[2])
    assert {t.label for t in at.sidebar.text_input} == {"User name", "Password"}
    assert "Sign in" in [b.label for b in at.sidebar.button]  # no OIDC: no [auth] secrets
    assert "oidc_login" not in [b.key for b in at.button]
    assert not {"Roll back", "Approve / promote", "Retrain now"} & set(_labels(at))


def test_a_required_sign_in_hides_every_page_until_then(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOODWIRE_ACCESS__REQUIRE_SIGN_IN", "true")
    at = _open(PAGES[0])
    assert not at.title and any("Sign in (sidebar)" in i.value for i in at.info)
    _sign_in(at, "vera")
    assert [t.value for t in at.title] == ["Overview"]


def test_a_wrong_password_is_refused_and_audited(env: Settings) -> None:
    store = Store(env.resolved_store_url())
    at = _sign_in(_open(PAGES[0]), "dana", "not-the-password")
    assert any("wrong user name or password" in e.value for e in at.error)
    assert "Sign out" not in _labels(at)
    (row,) = store.audit_rows("sign_in_failed")
    assert row["target"] == "dana" and "not-the-password" not in str(store.audit_rows())


@pytest.mark.parametrize(
    ("user", "page", "shown"),
    [
        ("vera", 2, set()),
        ("ann", 2, set()),
        ("dana", 2, {"Roll back", "Approve / promote", "Retrain now"}),
        ("ada", 2, {"Roll back", "Approve / promote", "Retrain now"}),
        ("vera", 1, set()),
        ("ann", 1, set()),
        ("dana", 1, {"Acknowledge", "Mute"}),
    ],
)
def test_each_role_sees_its_actions(populated: Settings, user: str, page: int, shown: set) -> None:
    at = _sign_in(_open(PAGES[page]), user)
    assert not at.exception, at.exception
    assert f"{user} · {USERS[user]}" in [c.value for c in at.sidebar.caption]
    everything = {"Roll back", "Approve / promote", "Retrain now", "Acknowledge", "Mute"}
    assert set(_labels(at)) & everything == shown


def test_model_actions_run_as_the_signed_in_operator(populated: Settings) -> None:
    store = Store(populated.resolved_store_url())
    registry = Registry(populated.resolved_registry())
    at = _sign_in(_open(PAGES[2]), "dana")
    at.text_input(key="ops_why").set_value("v2 misreads chatter")
    at.button[_labels(at).index("Roll back")].click().run()
    assert not at.exception and any("Rolled back" in s.value for s in at.success)
    assert registry.serving() == "v1"
    (row,) = store.audit_rows("rollback")
    assert (row["actor"], row["target"], row["reason"]) == ("dana", "v1", "v2 misreads chatter")

    at.selectbox(key="ops_version").set_value("v2")
    at.button[_labels(at).index("Approve / promote")].click().run()
    assert registry.serving() == "v2" and store.audit_rows("promote")[-1]["actor"] == "dana"

    # A retrain request reaches the learner's control topic on the real broker.
    at.button[_labels(at).index("Retrain now")].click().run()
    assert any("Retrain requested" in s.value for s in at.success), [e.value for e in at.error]
    sent = [
        json.loads(r.value) for r in read_all(populated.bootstrap_servers, populated.topics.control)
    ]
    assert any(m["action"] == "retrain" and m["actor"] == "dana" for m in sent), sent
    assert store.audit_rows("retrain")[-1]["reason"] == "v2 misreads chatter"


def test_an_operator_demoted_after_sign_in_is_refused_and_nothing_changes(
    populated: Settings,
) -> None:
    """The page still shows the buttons (the session signed in as operator); the action
    reads the role from the store again and refuses before it writes anything."""
    store = Store(populated.resolved_store_url())
    registry = Registry(populated.resolved_registry())
    at = _sign_in(_open(PAGES[2]), "dana")
    set_role(store, os_principal(), "dana", "viewer")
    before = len(store.audit_rows())
    at.button[_labels(at).index("Roll back")].click().run()
    assert any("rollback needs the operator role; dana is viewer" in e.value for e in at.error)
    assert registry.serving() == "v2" and not store.audit_rows("rollback")
    assert len(store.audit_rows()) == before


def test_alert_actions_run_as_the_signed_in_operator(populated: Settings) -> None:
    store = Store(populated.resolved_store_url())
    at = _sign_in(_open(PAGES[1]), "vera")
    assert "ack-al-init" not in [b.key for b in at.button]
    assert store.alert_rows(kind="negative_surge")[0]["acknowledged_by"] is None

    next(b for b in at.sidebar.button if b.label == "Sign out").click().run()
    _sign_in(at, "dana")
    at.button(key="ack-al-init").click().run()
    assert store.alert_rows(kind="negative_surge")[0]["acknowledged_by"] == "dana"
    at.button(key="mute-al-init").click().run()
    assert store.alert_rows(kind="negative_surge")[0]["muted_until"] is not None
    # Muted alerts leave the list unless asked for.
    at.run()
    assert not any("INIT" in e.label for e in at.expander)
    assert {r["action"] for r in store.audit_rows()} >= {"acknowledge", "mute"}


def test_a_correction_needs_the_analyst_role_and_shows_at_once(populated: Settings) -> None:
    store = Store(populated.resolved_store_url())
    at = _sign_in(_open(PAGES[3]), "vera")
    at.text_input(key="ex_query").set_value("shares move on results 7").run()
    texts = list(at.dataframe[0].value["text"])
    assert len(texts) == 11  # results 7 and 70-79
    row = texts.index("GLBX shares move on results 7")
    # Select that row, as a click in the grid does.
    at.session_state["ex_table"] = {"selection": {"rows": [row], "columns": []}}
    at.run()
    assert any("Correct it" in m.value for m in at.markdown), [m.value for m in at.markdown]
    before = len(store.labels_after(0))
    assert "Send correction" not in _labels(at)  # a viewer has no correction form
    assert any("Analysts and operators correct" in c.value for c in at.caption)
    assert len(store.labels_after(0)) == before

    next(b for b in at.sidebar.button if b.label == "Sign out").click().run()
    _sign_in(at, "ann")
    at.selectbox(key="fix_label").set_value("negative")
    at.selectbox(key="fix_topic").set_value("legal_regulatory")
    at.button[_labels(at).index("Send correction")].click().run()
    assert any("Correction sent" in s.value for s in at.success), [e.value for e in at.error]
    labels = store.labels_after(0)
    assert len(labels) == before + 1
    new = labels[-1]
    assert (new["item_id"], new["label"], new["topic"], new["annotator"]) == (
        "it-7", "negative", "legal_regulatory", "ann"
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


@pytest.mark.parametrize(("page", "title"), list(zip(PAGES, TITLES, strict=True)))
def test_a_store_outage_is_a_notice_not_a_traceback_and_the_page_recovers(
    settings: Settings, pg_fresh: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    page: str, title: str,
) -> None:  # fmt: skip
    pg_url = pg_fresh
    from moodwire.bench.proxy import TcpProxy

    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    with TcpProxy(host, int(port)) as proxy:
        url = pg_url.replace(host_port, proxy.address)
        s = settings.with_overrides(store_url=url, registry=tmp_path / "registry")
        populate_dashboard_store(Store(url), s.resolved_registry())
        for key, value in settings_env(s).items():
            monkeypatch.setenv(key, value)
        proxy.go_down()
        at = AppTest.from_file(APP, default_timeout=60)
        at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        warned = " ".join(w.value for w in at.warning)
        assert "The store is unreachable" in warned and "tries again" in warned
        proxy.come_back()
        at.run()
        assert not at.exception, at.exception
        assert [t.value for t in at.title] == [title]
        assert not [w for w in at.warning if "unreachable" in w.value]


def test_explain_shows_the_words_weighted_on_demand_and_once_per_text(
    populated: Settings, model_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import learner.explain
    import learner.loading

    # The item was scored by v1: here the real fine-tuned v1 of the tests' registry.
    monkeypatch.setenv("MOODWIRE_REGISTRY", str(model_registry))
    loads, explained = [], []
    real_load, real_explain = learner.loading.load_version, learner.explain.explain

    def counted_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loads.append(args[1])
        return real_load(*args, **kwargs)

    def counted_explain(classifier, text, **kwargs):  # noqa: ANN001, ANN003, ANN202
        explained.append(text)
        return real_explain(classifier, text, **kwargs)

    monkeypatch.setattr(learner.loading, "load_version", counted_load)
    monkeypatch.setattr(learner.explain, "explain", counted_explain)
    at = _open(PAGES[3])
    at.text_input(key="ex_query").set_value("shares move on results 7").run()
    row = list(at.dataframe[0].value["text"]).index("GLBX shares move on results 7")
    at.session_state["ex_table"] = {"selection": {"rows": [row], "columns": []}}
    at.run()
    assert not at.exception and "Explain" in _labels(at)
    assert loads == [] and not any("Why v1 says" in c.value for c in at.caption)  # not on load

    at.button(key="ex_explain").click().run()
    assert not at.exception, at.exception
    (why,) = [c.value for c in at.caption if c.value.startswith("Why v1 says")]
    assert "Most weight:" in why and "Integrated gradients, 50 steps" in why
    (shown,) = [m.value for m in at.markdown if "-background[" in m.value]
    assert all(word in shown for word in ["GLBX", "shares", "move", "on", "results", "7"]), shown
    # Kept while the page reruns, and computed (and the model loaded) once.
    at.run()
    assert any(c.value.startswith("Why v1 says") for c in at.caption)
    assert loads == ["v1"] and explained == ["GLBX shares move on results 7"]
