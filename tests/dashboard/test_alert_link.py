"""A notification's link (``/alerts?alert=<id>``) opens that alert on the dashboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import populate_dashboard_store, settings_env
from streamlit.testing.v1 import AppTest

from moodwire.settings import Settings
from state.store import Store

APP = str(Path(__file__).resolve().parents[2] / "moodwire" / "dashboard_app.py")
ALERTS = "../dashboard/views/alerts.py"


@pytest.fixture
def populated(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    s = settings.with_overrides(registry=tmp_path / "registry")
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    populate_dashboard_store(Store(s.resolved_store_url()), s.resolved_registry())
    return s


def _open(alert: str | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(ALERTS)
    if alert is not None:
        at.query_params["alert"] = alert
    return at.run()


def _expanded(at: AppTest) -> dict[str, bool]:
    return {e.label.split(" · ")[0]: e.proto.expanded for e in at.expander}


def test_without_a_link_the_newest_alert_with_items_opens(populated: Settings) -> None:
    at = _open(None)
    assert not at.exception, at.exception
    assert _expanded(at) == {"▲ negative_surge on INIT": True, "△ drift on stream": False}
    assert "Linked alert" not in [s.value for s in at.subheader]


def test_the_linked_alert_opens_first_and_alone(populated: Settings) -> None:
    at = _open("al-drift")
    assert not at.exception, at.exception
    assert [s.value for s in at.subheader][:1] == ["Linked alert"]
    labels = [e.label.split(" · ")[0] for e in at.expander]
    assert labels == ["△ drift on stream", "▲ negative_surge on INIT"]  # shown once, first
    assert _expanded(at) == {"△ drift on stream": True, "▲ negative_surge on INIT": False}


def test_the_linked_alert_shows_whatever_the_filters(populated: Settings) -> None:
    at = _open("al-drift")
    at.selectbox(key="al_kind").set_value("negative_surge").run()
    assert not at.exception, at.exception
    labels = [e.label.split(" · ")[0] for e in at.expander]
    assert labels == ["△ drift on stream", "▲ negative_surge on INIT"]


def test_an_unknown_alert_says_so(populated: Settings) -> None:
    at = _open("al-nope")
    assert not at.exception, at.exception
    assert any("No alert 'al-nope'" in w.value for w in at.warning)
    assert len(at.expander) == 2
