"""The dashboard in a real browser: headless Chromium over a store that a short demo filled.

Debian's Chromium (``scripts/setup.sh`` installs it) driven by Playwright; no browser
is downloaded. Full-page screenshots of every page go to ``$MOODWIRE_SCREENSHOTS``
when set, else to a temporary directory (printed).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import clean_env, wait_until

from moodwire.bench.dashboard import (
    CHART_DESCRIPTIONS_JS,
    PAGE_DONE_JS,
    serve_dashboard,
    stop_group,
)
from state.store import Store, audit_log
from stream.broker import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "browser-test-password"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, model_registry: Path) -> Path:
    """A data dir filled by ``moodwire demo --headless``: past its scripted surge and drift."""
    data = tmp_path_factory.mktemp("browser-demo")
    registry = data / "registry"
    shutil.copytree(model_registry, registry)  # the demo's learner may promote into it
    out, err = data / "demo.out", data / "demo.err"
    # The demo's own pace (6000 items at 20/s, 10-s windows): the surge comes at 18 % of the
    # items, 54 s in, in the sixth window; the alert rules judge a window against at least
    # three whole windows before it, the stream's first (partial) one never counting, so a
    # faster or shorter feed puts the surge where it mostly goes unjudged. The drift comes at
    # 30 %, 90 s in. On a loaded machine the worker lags, so wait for both in the store, then
    # Ctrl-C the demo (--duration only caps a run gone wrong).
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moodwire", "demo", "--headless",
             "--duration", "420"],
            cwd=ROOT, env=clean_env(data, registry=str(registry)), stdout=o, stderr=e,
            start_new_session=True,
        )  # fmt: skip
    db = data / "moodwire.db"
    stores: list[Store] = []

    def surge_and_drift_seen() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"the demo exited with {proc.returncode}:\n"
                + out.read_text(errors="replace")[-2000:]
                + err.read_text(errors="replace")[-3000:]
            )
        if not db.exists():
            return False
        if not stores:
            stores.append(Store(f"sqlite:///{db}", create=False))
        try:
            return bool(
                stores[0].alert_rows(kind="negative_surge", entity="INIT", limit=1)
                and stores[0].drift_event_rows(limit=1)  # the models page's timeline
            )
        except sa.exc.OperationalError:  # the demo has not created the tables yet
            return False

    try:
        wait_until(surge_and_drift_seen, 420, "the surge on INIT alerted and the drift seen", 2.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    finally:
        for store in stores:
            store.engine.dispose()
        stop_group(proc)
    text = out.read_text(errors="replace")
    assert proc.returncode == 0, text[-2000:] + err.read_text(errors="replace")[-3000:]
    return data


@pytest.fixture(scope="module")
def dashboard(demo_dir: Path) -> Iterator[str]:
    from stream import access

    access.add_user(
        Store(f"sqlite:///{demo_dir / 'moodwire.db'}"), access.os_principal(), "vera", "viewer",
        PASSWORD,
    )  # fmt: skip
    env = clean_env(demo_dir, registry=str(demo_dir / "registry"))
    with serve_dashboard(env, free_port(), demo_dir / "dashboard.log") as base:
        yield base


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("MOODWIRE_SCREENSHOTS")
    where = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    where.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {where}")
    return where


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()


def _open(page: Any, base: str, path: str, title: str) -> list[str]:
    """Load a page until its script run is over and its charts are drawn; their descriptions."""
    page.goto(f"{base}/{path}", timeout=TIMEOUT_MS)
    page.wait_for_function(PAGE_DONE_JS, arg=title, polling=250, timeout=TIMEOUT_MS)
    return page.evaluate(CHART_DESCRIPTIONS_JS)


def _shot(page: Any, shots: Path, name: str) -> None:
    """A full-page screenshot: Streamlit scrolls inside its main block, so grow the viewport."""
    size = page.viewport_size
    height = page.evaluate(
        """() => Math.max(document.body.scrollHeight, ...[...document.querySelectorAll(
             '[data-testid="stMain"], [data-testid="stSidebarContent"]')].map(e => e.scrollHeight))"""
    )
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    try:
        page.wait_for_timeout(500)  # charts follow the new layout
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    finally:
        page.set_viewport_size(size)


def _match(descriptions: list[str], pattern: str) -> re.Match[str]:
    for d in descriptions:
        m = re.search(pattern, d)
        if m:
            return m
    raise AssertionError(f"no chart description matches {pattern!r}: {descriptions}")


def _n(text: str) -> int:
    return int(text.replace(",", ""))


def test_overview_draws_the_index_the_movers_and_the_alert_feed(
    dashboard: str, page: Any, shots: Path
) -> None:
    charts = _open(page, dashboard, "", "Overview")
    index = _match(charts, r"sentiment index of all items: ([\d,]+) buckets, ([\d,]+) items")
    assert _n(index[1]) > 0 and _n(index[2]) > 0, index[0]
    movers = _match(charts, r"entities that moved most: (\d+) entities")
    assert _n(movers[1]) > 0, movers[0]
    body = page.inner_text("body")
    assert "negative_surge on INIT" in body
    _shot(page, shots, "overview")


def test_alerts_show_the_init_surge_with_its_evidence(
    dashboard: str, page: Any, shots: Path
) -> None:
    _open(page, dashboard, "alerts", "Alerts")
    summary = page.locator("summary", has_text="negative_surge on INIT")
    expander = page.locator('[data-testid="stExpander"]').filter(has=summary).first
    assert expander.count() == 1, page.inner_text("body")[:2000]
    if expander.locator("details").get_attribute("open") is None:  # the newest opens itself
        expander.locator("summary").click()
    expander.get_by_text("Evidence").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(PAGE_DONE_JS, arg="Alerts", polling=250, timeout=TIMEOUT_MS)
    charts = page.evaluate(CHART_DESCRIPTIONS_JS)
    m = _match(charts, r"negative_surge on INIT: .* over (\d+) baseline windows")
    assert _n(m[1]) > 0, m[0]
    assert "INIT" in expander.inner_text()
    _shot(page, shots, "alerts")


def test_models_page_shows_the_serving_version_and_its_charts(
    dashboard: str, page: Any, shots: Path
) -> None:
    charts = _open(page, dashboard, "models", "Drift & models")
    body = page.inner_text("body")
    assert re.search(r"Serving: v\d+", body), body[:2000]
    assert "v1" in body
    acc = _match(charts, r"accuracy on ([\d,]+) labels by version: (.+)")
    assert _n(acc[1]) > 0 and "v1" in acc[2], acc[0]
    timeline = _match(charts, r"model timeline: (.+)")
    assert timeline[1] != "no events", timeline[0]
    _shot(page, shots, "models")


def _rerun(page: Any, action: Any) -> None:
    """Do ``action`` and wait for the script run it causes to finish and its elements to load."""
    page.evaluate(
        """() => {
          window.__reran = false;
          const app = document.querySelector('[data-testid="stApp"]');
          new MutationObserver((records) => {
            if (records.some(r => r.oldValue === 'running')
                || app.getAttribute('data-test-script-state') === 'running') window.__reran = true;
          }).observe(app, {attributes: true, attributeOldValue: true,
                           attributeFilter: ['data-test-script-state']});
        }"""
    )
    action()
    page.wait_for_function(
        """() => window.__reran
          && document.querySelector('[data-testid="stApp"]')
               .getAttribute('data-test-script-state') === 'notRunning'
          && !document.querySelector('[data-testid="stSkeleton"]')""",
        polling=100,
        timeout=TIMEOUT_MS,
    )


def test_explore_searches_the_items(dashboard: str, page: Any, shots: Path) -> None:
    _open(page, dashboard, "explore", "Explore")
    search = page.get_by_role("textbox", name="Search")

    def found(query: str) -> int:
        search.fill(query)
        _rerun(page, lambda: search.press("Enter"))
        caption = page.get_by_text(re.compile(r"^\d+ items")).first.inner_text()
        return int(caption.split()[0])

    assert found("no-such-words-anywhere") == 0
    assert page.get_by_text("Nothing matches.").is_visible()
    hits = found("Initech")
    assert hits > 0
    page.locator('[data-testid="stDataFrame"] table tbody tr').first.wait_for(
        state="attached", timeout=TIMEOUT_MS
    )
    # The grid draws on a canvas; its accessible table holds the rows in view.
    rows = page.evaluate(
        """() => {
          const t = document.querySelector('[data-testid="stDataFrame"] table');
          const heads = {};
          t.querySelectorAll('thead th').forEach(th => {
            heads[th.getAttribute('aria-colindex')] = th.textContent.trim(); });
          return [...t.querySelectorAll('tbody tr')].map(tr => Object.fromEntries(
            [...tr.querySelectorAll('td')].map(td =>
              [heads[td.getAttribute('aria-colindex')], td.textContent.trim()])));
        }"""
    )
    _shot(page, shots, "explore")
    assert rows, "no rows in the results grid"
    for row in rows:
        assert "initech" in row["text"].lower(), row
        assert row["label"] in {"negative", "neutral", "positive"}, row


def test_operator_actions_are_not_offered_to_a_viewer(
    dashboard: str, demo_dir: Path, page: Any, shots: Path
) -> None:
    from state.registry import Registry

    registry = Registry(demo_dir / "registry")
    serving = registry.serving()
    _open(page, dashboard, "models", "Drift & models")
    assert page.get_by_role("button", name="Roll back").count() == 0  # nobody signed in
    page.get_by_label("User name").fill("vera")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("vera · viewer").wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("Operators retrain, approve, promote and roll back").wait_for(
        timeout=TIMEOUT_MS
    )
    _shot(page, shots, "viewer")
    assert page.get_by_role("button", name="Roll back").count() == 0
    assert registry.serving() == serving
    store = Store(f"sqlite:///{demo_dir / 'moodwire.db'}", create=False)
    with store.engine.connect() as conn:
        rows = conn.execute(audit_log.select().where(audit_log.c.action == "rollback")).all()
    assert rows == []


def test_the_demo_serves_live_trends_a_newcomer_sees(
    tmp_path: Path, model_registry: Path, browser: Any, shots: Path
) -> None:
    """`moodwire demo` (not headless) prints the dashboard's URL; the open overview fills itself.

    The page is opened as soon as the URL is printed, before any item is scored,
    and is never reloaded: the live refresh must bring the trend in.
    """
    import time

    registry = tmp_path / "registry"
    shutil.copytree(model_registry, registry)
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moodwire", "demo", "--items", "3000", "--rate", "20",
         "--dashboard-port", str(port)],
        cwd=ROOT, env=clean_env(tmp_path, registry=str(registry)), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if line.startswith("dashboard"):
                url = line.split()[1]
                break
        assert url == f"http://127.0.0.1:{port}", url
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        wait_until(lambda: _answers(url), 120, "the dashboard answering", 0.5)
        page.goto(url)
        chart = page.locator(
            '[data-testid="stVegaLiteChart"][aria-label^="sentiment index of all"]'
        )
        chart.first.wait_for(timeout=240_000)
        seen = time.monotonic() - started
        label = chart.first.get_attribute("aria-label") or ""
        items = int(re.search(r"([\d,]+) items", label).group(1).replace(",", ""))  # type: ignore[union-attr]
        print(f"\nlive trend seen {seen:.1f} s after `moodwire demo` started: {label}")
        assert items > 0
        page.screenshot(path=str(shots / "demo-overview.png"), full_page=True)
        page.close()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        stop_group(proc)
    assert proc.returncode == 0


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
