"""Signing in to the dashboard in a real browser: Debian's Chromium driven by Playwright.

The dashboard is served by ``moodwire dashboard`` over a small populated store with
a viewer and an operator; each signs in through the sidebar's form, and the page
shows the operator's controls to the operator only. A wrong password is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import clean_env, populate_dashboard_store

from moodwire.bench.dashboard import PAGE_DONE_JS, serve_dashboard
from state.registry import Registry
from state.store import Store
from stream import access
from stream.broker import free_port

pytestmark = pytest.mark.integration
TIMEOUT_MS = 90_000
PASSWORD = "browser sign-in password"
CONTROLS = ("Retrain now", "Approve / promote", "Roll back")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("browser-sign-in")
    store = Store(f"sqlite:///{data / 'moodwire.db'}")
    populate_dashboard_store(store, data / "registry")
    for name, role in (("vera", "viewer"), ("otto", "operator")):
        access.add_user(store, access.os_principal(), name, role, PASSWORD)
    env = clean_env(data, registry=str(data / "registry"), bootstrap_servers="127.0.0.1:9")
    with serve_dashboard(env, free_port(), data / "dashboard.log") as base:
        yield base, data


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()


def _models_page(page: Any, base: str) -> None:
    page.goto(f"{base}/models", timeout=TIMEOUT_MS)
    page.wait_for_function(PAGE_DONE_JS, arg="Drift & models", polling=250, timeout=TIMEOUT_MS)


def _sign_in(page: Any, name: str, password: str) -> None:
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def _shown(page: Any) -> set[str]:
    return {c for c in CONTROLS if page.get_by_role("button", name=c).count() > 0}


def test_a_viewer_signs_in_and_sees_no_controls(dashboard: tuple[str, Path], page: Any) -> None:
    base, _ = dashboard
    _models_page(page, base)
    assert _shown(page) == set()  # nobody signed in
    _sign_in(page, "vera", PASSWORD)
    page.get_by_text("vera · viewer").wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("Operators retrain, approve, promote and roll back").wait_for(
        timeout=TIMEOUT_MS
    )
    assert _shown(page) == set()


def test_an_operator_signs_in_and_sees_the_controls(dashboard: tuple[str, Path], page: Any) -> None:
    base, data = dashboard
    _models_page(page, base)
    _sign_in(page, "otto", PASSWORD)
    page.get_by_text("otto · operator").wait_for(timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Roll back").wait_for(timeout=TIMEOUT_MS)
    assert _shown(page) == set(CONTROLS)
    # The operator rolls back; the audit log names the signed-in user.
    page.get_by_role("button", name="Roll back").click()
    page.get_by_text("Rolled back.").wait_for(timeout=TIMEOUT_MS)
    assert Registry(data / "registry").serving() == "v1"
    store = Store(f"sqlite:///{data / 'moodwire.db'}", create=False)
    assert store.audit_rows("rollback")[-1]["actor"] == "otto"


def test_a_wrong_password_is_refused_in_the_browser(dashboard: tuple[str, Path], page: Any) -> None:
    base, data = dashboard
    _models_page(page, base)
    _sign_in(page, "otto", "not otto's password")
    page.locator(
        '[data-testid="stAlertContentError"]', has_text="wrong user name or password"
    ).wait_for(timeout=TIMEOUT_MS)
    assert _shown(page) == set()
    store = Store(f"sqlite:///{data / 'moodwire.db'}", create=False)
    assert store.audit_rows("sign_in_failed")[-1]["target"] == "otto"
