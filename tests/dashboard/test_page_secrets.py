"""No secret reaches the dashboard's pages: a real browser reads every page's source.

The dashboard is served with every kind of secret configured (the store URL's
database password, the SASL password, the operator credential, a webhook URL
carrying a token); Chromium renders each page and the test searches the
rendered DOM, the served HTML and the server's log for any of them.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import clean_env, populate_dashboard_store

from moodwire.bench.dashboard import PAGE_DONE_JS, serve_dashboard
from state.store import Store
from stream.broker import free_port

pytestmark = pytest.mark.integration
DB_PASSWORD = "pg-Secret-4c1d"
SASL_PASSWORD = "sasl-Secret-8e2f"
ORIGIN_KEY = "origin-Secret-0b7a"
HOOK_TOKEN = "hook-Secret-9d3e"
SECRETS = (DB_PASSWORD, SASL_PASSWORD, ORIGIN_KEY, HOOK_TOKEN)
PAGES = {"": "Overview", "alerts": "Alerts", "models": "Drift", "explore": "Explore"}


def test_no_secret_in_any_page_source_or_the_dashboard_log(
    pg_fresh: str, model_registry: Path, tmp_path: Path, browser: Any
) -> None:
    # Trust authentication ignores the password, so the URL can carry one and still work.
    url = pg_fresh.replace("://postgres@", f"://postgres:{DB_PASSWORD}@", 1)
    assert DB_PASSWORD in url, pg_fresh
    registry = tmp_path / "registry"
    shutil.copytree(model_registry, registry)
    populate_dashboard_store(Store(url), registry)
    env = clean_env(tmp_path, registry=str(registry), store_url=url) | {
        "MOODWIRE_ORIGINS": json.dumps({"dashboard": ORIGIN_KEY}),
        "MOODWIRE_NOTIFY": json.dumps([{"url": f"jsons://alerts.example.test/hook/{HOOK_TOKEN}"}]),
        "MOODWIRE_WEBHOOK_URL": f"https://hooks.example.test/services/{HOOK_TOKEN}",
        "MOODWIRE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "MOODWIRE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "MOODWIRE_KAFKA__SASL_USERNAME": "dashboard",
        "MOODWIRE_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
    }
    log = tmp_path / "dashboard.log"
    sources: dict[str, str] = {}
    with serve_dashboard(env, free_port(), log) as base:
        sources["served html"] = urllib.request.urlopen(base, timeout=30).read().decode()
        page = browser.new_page()
        try:
            for path, title in PAGES.items():
                page.goto(f"{base}/{path}", timeout=90_000)
                page.wait_for_function(PAGE_DONE_JS, arg=title, timeout=90_000)
                sources[f"/{path} rendered"] = page.content()
        finally:
            page.close()
    sources["log"] = log.read_text(errors="replace")
    assert "Moodwire" in sources["/ rendered"]  # the pages really rendered
    for where, text in sources.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {where}"
