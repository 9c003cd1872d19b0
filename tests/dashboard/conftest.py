"""The dashboard tests' browser: Debian's Chromium driven by Playwright (no browser is
downloaded). Outside CI a missing Chromium skips the browser tests; in CI it fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from moodwire.bench.dashboard import CHROMIUM, launch_chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        msg = f"{CHROMIUM} is missing: run scripts/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()
