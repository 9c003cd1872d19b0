"""``moodwire bench dashboard``: how fast the dashboard paints over a large store.

Fills a fresh SQLite store with generated, realistic rows (items over a week of event
time, per-entity rows, topics, labels, alerts, drift events, audit rows), serves the
dashboard on it and loads it in headless Chromium (Debian's, driven by Playwright; no
browser is ever downloaded). The figure is the *first meaningful paint*: the time from
navigation start to the first Altair chart (``.vega-embed``) with its marks drawn. It
is taken cold (a server that has served nobody yet, an empty browser cache, with the
stages of that load as a timeline), warm (reloads: the median), and for a new visitor
(an empty browser cache, the server as the others left it); then the time from a click
in the sidebar to each other page fully drawn.

The browser helpers here are shared with the browser tests (``tests/dashboard``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from moodwire.settings import Settings

CHROMIUM = Path(os.environ.get("MOODWIRE_CHROMIUM", "/usr/bin/chromium"))
# Flags for a root process on a machine with a closed network: without the
# background-networking ones Chromium keeps trying (and failing) to reach Google.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# (URL path, st.title) of each dashboard page, the default one first.
PAGES = [
    ("", "Overview"),
    ("alerts", "Alerts"),
    ("models", "Drift & models"),
    ("explore", "Explore"),
]
TARGET_FIRST_PAINT_S = 3.0
DIM = 384
LABELS = ("negative", "neutral", "positive")

# -- the page-side checks (JavaScript run in the page) --------------------------------------

# A chart is drawn once vega has put marks into its SVG, or non-blank pixels into its
# canvas (Streamlit switches to the canvas renderer for charts with many points).
_DRAWN_JS = """
const drawn = (el) => {
  const svg = el.querySelector('svg.marks');
  if (svg) return svg.querySelector('.role-mark > *') !== null;
  const c = el.querySelector('canvas.marks');
  if (!c || !c.width || !c.height) return false;
  const ctx = c.getContext('2d');
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < px.length; i += 4 * 97) {
    if (px[i + 3] && (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250)) return true;
  }
  return false;
};
const fresh = (el) => !el.closest('[data-stale="true"]');
const title = () => {
  const h = [...document.querySelectorAll('h1')].filter(fresh);
  return h.length ? h[0].textContent.trim() : null;
};
const state = () => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app ? app.getAttribute('data-test-script-state') : null;
};
const charts = () =>
  [...document.querySelectorAll('.vega-embed, [data-testid="stVegaLiteChart"]')].filter(fresh);
"""

# performance.now() at the first animation frame where a fresh chart is drawn.
FIRST_CHART_JS = (
    "() => {" + _DRAWN_JS + "return charts().some(drawn) ? performance.now() : false; }"
)

# performance.now() once the page titled ``want`` has finished its script run, every
# element on it has loaded, and every chart on it is drawn.
PAGE_DONE_JS = (
    "(want) => {"
    + _DRAWN_JS
    + """
  const t = title();
  if (!t || !t.startsWith(want) || state() !== 'notRunning') return false;
  // Elements whose component is still loading show as skeletons (charts among them).
  if ([...document.querySelectorAll('[data-testid="stSkeleton"]')].some(fresh)) return false;
  const cs = charts();
  return cs.every(drawn) ? performance.now() : false;
}"""
)

# Run in every document of a context: the first time (ms after navigation start) each
# stage of a load is seen, one check per animation frame.
TIMELINE_INIT_JS = (
    "(() => {"
    + _DRAWN_JS
    + """
  window.__moodwireTimeline = {};
  const mark = (k) => {
    if (!(k in window.__moodwireTimeline)) window.__moodwireTimeline[k] = performance.now();
  };
  const loop = () => {
    try {
      if (state()) mark('app_booted');
      if (state() === 'running') mark('script_started');
      if (title()) mark('title');
      if (document.querySelector('[data-testid="stMetric"]')) mark('first_metric');
      if (charts().length) mark('first_chart_element');
      if (charts().some(drawn)) mark('first_chart_drawn');
    } catch (e) {}
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
})();"""
)

CHART_DESCRIPTIONS_JS = (
    "() => {" + _DRAWN_JS + "return charts().map(e => e.getAttribute('aria-label') || ''); }"
)


def launch_chromium(playwright: Any) -> Any:
    """Debian's headless Chromium (never a downloaded one)."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(
            f"{CHROMIUM} not found: run scripts/setup.sh (it installs Debian's chromium)"
        )
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


# -- serving the dashboard -------------------------------------------------------------------


def wait_healthy(base_url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Until Streamlit's health endpoint answers ``ok``; fails early if the server died."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the dashboard exited with {proc.returncode}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as r,
        ):
            if r.read().strip() == b"ok":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dashboard at {base_url} was not healthy in {timeout_s}s")
        time.sleep(0.25)


def stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process started with ``start_new_session`` and its children: Ctrl-C, then kill."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    # The group may outlive its leader (a child that ignored the signal): kill what is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(10)


@contextlib.contextmanager
def serve_dashboard(
    env: dict[str, str], port: int, log: Path, timeout_s: float = 120
) -> Iterator[str]:
    """``moodwire dashboard --port PORT`` in its own process group; yields its base URL."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moodwire", "dashboard", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that stopping it stops Streamlit under it too
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, timeout_s, log)
        yield base
    finally:
        stop_group(proc)


# -- filling a store ---------------------------------------------------------------------------


def _entities(n: int = 50) -> list[tuple[str, str]]:
    text = resources.files("stream").joinpath("defaults/watchlist.yaml").read_text()
    rows = yaml.safe_load(text)["entities"]
    return [(r["ticker"], r["name"]) for r in rows[:n]]


def _topics() -> list[str]:
    text = resources.files("stream").joinpath("defaults/topics.yaml").read_text()
    return [t["name"] for t in yaml.safe_load(text)["topics"]] + ["other"]


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float16)


def fill_store(
    url: str,
    n: int,
    *,
    seed: int = 0,
    days: float = 7.0,
    chunk: int = 5000,
    progress: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write ``n`` generated items (and their companions) to the store at ``url``.

    Event times are spread over the ``days`` before ``now`` (so a "last 24 h" view
    holds a seventh of them); model v1 scores the first 60 %, v2 the rest.
    """
    from tqdm import tqdm

    from state.store import Store
    from stream.alerts import Alert, alert_id
    from stream.synthetic import CHATTER, NEWS, _fill

    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    store = Store(url)
    now = now or datetime.now(UTC)
    start = now - timedelta(days=days)
    span = days * 86400.0
    offsets = np.sort(nprng.uniform(0.0, span, n))
    entities, topics = _entities(), _topics()
    hot = entities[:10]  # a few names get most of the talk, as in real feeds
    swap_at = int(n * 0.6)
    sample: dict[str, list[dict[str, Any]]] = {}  # a few items per entity, for alerts
    label_rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=n, unit="item", desc="filling store", disable=not progress, file=sys.stderr)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        vecs = _unit_vectors(nprng, hi - lo)
        rows = []
        for i in range(lo, hi):
            ts = start + timedelta(seconds=float(offsets[i]))
            label = rng.choices(LABELS, weights=(3, 4, 3))[0]
            tick, name = rng.choice(hot) if rng.random() < 0.5 else rng.choice(entities)
            chatter = rng.random() < (0.15 if i < swap_at else 0.5)
            text = _fill(rng.choice((CHATTER if chatter else NEWS)[label]), rng, tick, name)
            ents = [tick]
            if rng.random() < 0.1:
                other = rng.choice(entities)[0]
                if other != tick:
                    ents.append(other)
            top = rng.uniform(0.45, 0.98)
            rest = 1.0 - top
            split = rng.uniform(0.0, rest)
            probs = dict(zip([x for x in LABELS if x != label], (split, rest - split), strict=True))
            probs[label] = top
            item_id = f"bench-{seed}-{i}"
            rows.append(
                {
                    "id": item_id,
                    "text": text,
                    "ts": ts,
                    "source": "bench-social" if chatter else "bench-wire",
                    "entities": ents,
                    "meta": {"true_label": label},
                    "label": label,
                    "topic": rng.choice(topics),
                    "p_negative": round(probs["negative"], 6),
                    "p_neutral": round(probs["neutral"], 6),
                    "p_positive": round(probs["positive"], 6),
                    "confidence": round(top, 6),
                    "model_version": "v1" if i < swap_at else "v2",
                    "neighbors": [
                        {
                            "id": f"bench-{seed}-{rng.randrange(max(1, i))}",
                            "similarity": round(rng.uniform(0.5, 0.95), 4),
                            "label": rng.choice(LABELS),
                        }
                        for _ in range(3 if i else 0)
                    ],
                    "embedding": vecs[i - lo].tobytes(),
                    "src_partition": i % 4,
                    "src_offset": i // 4,
                    "kafka_ts": ts + timedelta(milliseconds=rng.randint(5, 200)),
                    "scored_at": ts + timedelta(milliseconds=rng.randint(200, 900)),
                }
            )
            if rng.random() < 0.05:
                wrong = rng.random() < 0.05
                given = rng.choice([x for x in LABELS if x != label]) if wrong else label
                label_rows.append(
                    {
                        "id": hashlib.sha256(f"{item_id}|{given}".encode()).hexdigest()[:32],
                        "item_id": item_id,
                        "text": None,
                        "label": given,
                        "topic": None,
                        "source": "bench-annotator",
                        "annotator": f"analyst-{rng.randint(1, 3)}",
                        "ts": ts + timedelta(minutes=5),
                    }
                )
            per = sample.setdefault(tick, [])
            if len(per) < 200:
                per.append({"id": item_id, "ts": ts, "text": text, "label": label, "probs": probs})
        store.write_batch(rows, [])
        bar.update(hi - lo)
    bar.close()
    fill_s = time.perf_counter() - t0
    for lo in range(0, len(label_rows), chunk):
        store.add_labels(label_rows[lo : lo + chunk])

    # Alerts: a few episodes on busy names over the week, and the drift at the v2 swap.
    kinds = ("negative_surge", "volume_spike", "sentiment_shift")
    n_alerts = 0
    for k, (tick, _name) in enumerate(hot[:9]):
        per = sample.get(tick) or []
        if not per:
            continue
        pick = per[rng.randrange(len(per))]
        w0 = pick["ts"].timestamp() // 300 * 300
        kind = kinds[k % 3]
        stat = rng.uniform(3.2, 6.5)
        signal_ = {
            "statistic": stat,
            "baseline": 0.3,
            "value": 0.7,
            "n": 40,
            "severity": "critical" if stat > 5 else "warning",
        }
        top = sorted(per[:40], key=lambda x: x["probs"]["positive"] - x["probs"]["negative"])[:5]
        alert = Alert(
            id=alert_id("episode", "entity", tick, w0),
            kind=kind,
            scope="entity",
            key=tick,
            severity=signal_["severity"],
            window_start=w0,
            window_end=w0 + 300,
            first_window_start=w0,
            statistic=stat,
            baseline=0.3,
            value=0.7,
            n=40,
            signals={kind: signal_},
            evidence={
                "item_ids": [x["id"] for x in per[:40]],
                "truncated": False,
                "n": 40,
                "negatives": sum(x["label"] == "negative" for x in per[:40]),
                "top": [
                    {
                        "id": x["id"],
                        "text": x["text"],
                        "score": round(x["probs"]["positive"] - x["probs"]["negative"], 4),
                        "label": x["label"],
                        "ts": x["ts"].isoformat(),
                    }
                    for x in top
                ],
            },
            baseline_windows=[],
            details={"peak_statistic": stat},
        )
        n_alerts += store.upsert_alert(alert.as_dict())
    swap_ts = start + timedelta(seconds=float(offsets[swap_at])) if n else now
    for j, (detector, sig) in enumerate((("adwin", "confidence"), ("page_hinkley", "label_mix"))):
        event = {
            "ts": swap_ts + timedelta(minutes=3 * j),
            "detector": detector,
            "signal": sig,
            "statistic": round(rng.uniform(0.05, 0.3), 4),
            "window": 500,
            "position": swap_at + 200 * j,
            "origin": "worker:bench",
            "model_version": "v1",
            "details": {},
        }
        seq = store.record_drift(event)
        drift = Alert(
            id=alert_id("drift", "stream", None, event["ts"].timestamp()),
            kind="drift",
            scope="stream",
            key=None,
            severity="warning",
            window_start=event["ts"].timestamp(),
            window_end=event["ts"].timestamp(),
            first_window_start=event["ts"].timestamp(),
            statistic=event["statistic"],
            baseline=0.0,
            value=event["statistic"],
            n=500,
            signals={f"{detector} on {sig}": {"statistic": event["statistic"]}},
            evidence={"item_ids": [], "n": 0, "top": [], "truncated": False},
            baseline_windows=[],
            details={"events": [seq], "origin": "worker:bench", "model_version": "v1"},
        )
        n_alerts += store.upsert_alert(drift.as_dict())
    store.audit("bench", "promote", "v1", "bootstrap", {})
    store.audit("bench", "retrain", None, "drift on confidence", {"labels": len(label_rows)})
    store.audit("bench", "promote", "v2", "beat v1 on new labels", {"parent": "v1"})
    for a in store.alert_rows(limit=2):
        store.acknowledge_alert(a["id"], "bench")
        store.audit("bench", "acknowledge", a["id"], "seen", {})
    store.engine.dispose()
    return {
        "items": n,
        "fill_s": round(fill_s, 2),
        "fill_items_per_s": round(n / fill_s, 1) if fill_s > 0 else None,
        "entities": len(entities),
        "labels": len(label_rows),
        "alerts": n_alerts,
    }


# -- measuring ---------------------------------------------------------------------------------


def _first_paint(page: Any, timeout_ms: float) -> float:
    """Seconds from this navigation's start to its first drawn chart."""
    handle = page.wait_for_function(FIRST_CHART_JS, polling="raf", timeout=timeout_ms)
    return float(handle.json_value()) / 1000.0


def _page_done(page: Any, title: str, timeout_ms: float) -> float:
    handle = page.wait_for_function(PAGE_DONE_JS, arg=title, polling="raf", timeout=timeout_ms)
    return float(handle.json_value()) / 1000.0


def _nav_link(page: Any, path: str) -> Any:
    links = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]')
    if links.count():
        return links.first
    links = page.locator(f'a[href$="/{path}"]')
    return links.first if links.count() else None


def measure(base_url: str, *, warm_loads: int = 5, timeout_s: float = 120) -> dict[str, Any]:
    """First paint of the overview: cold, warm (reloads), and for a new visitor to a warm
    server; and the time to switch to each other page (click to all drawn)."""
    from playwright.sync_api import sync_playwright

    timeout_ms = timeout_s * 1000
    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_init_script(TIMELINE_INIT_JS)
            page = context.new_page()
            page.goto(base_url + "/", wait_until="commit", timeout=timeout_ms)
            out["overview_first_paint_cold_s"] = round(_first_paint(page, timeout_ms), 3)
            out["overview_complete_cold_s"] = round(_page_done(page, PAGES[0][1], timeout_ms), 3)
            timeline = page.evaluate("() => window.__moodwireTimeline")
            out["overview_cold_timeline_s"] = {
                k: round(v / 1000.0, 3) for k, v in sorted(timeline.items(), key=lambda kv: kv[1])
            }
            out["overview_charts"] = page.evaluate(CHART_DESCRIPTIONS_JS)
            warm, warm_done = [], []
            for _ in range(warm_loads):
                page.reload(wait_until="commit", timeout=timeout_ms)
                warm.append(round(_first_paint(page, timeout_ms), 3))
                warm_done.append(round(_page_done(page, PAGES[0][1], timeout_ms), 3))
            out["overview_first_paint_warm_s"] = warm
            out["overview_first_paint_warm_median_s"] = round(statistics.median(warm), 3)
            out["overview_complete_warm_median_s"] = round(statistics.median(warm_done), 3)
            switches: dict[str, float] = {}
            charts: dict[str, int] = {}
            for path, title in PAGES[1:]:
                link = _nav_link(page, path)
                if link is None:
                    raise RuntimeError(f"no link to /{path} on the page")
                t0 = float(page.evaluate("() => performance.now()"))
                link.click()
                done = float(
                    page.wait_for_function(
                        PAGE_DONE_JS, arg=title, polling="raf", timeout=timeout_ms
                    ).json_value()
                )
                switches[path] = round((done - t0) / 1000.0, 3)
                charts[path] = len(page.evaluate(CHART_DESCRIPTIONS_JS))
            out["page_switch_s"] = switches
            out["page_charts"] = charts
            # A new visitor: an empty browser cache, the server as the others left it.
            visitor = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = visitor.new_page()
            page.goto(base_url + "/", wait_until="commit", timeout=timeout_ms)
            out["overview_first_paint_new_visitor_s"] = round(_first_paint(page, timeout_ms), 3)
            visitor.close()
            out["browser"] = f"chromium {browser.version}"
        finally:
            browser.close()
    return out


def dashboard_bench(
    settings: Settings,
    *,
    items: int = 100_000,
    store_url: str | None = None,
    warm_loads: int = 5,
    port: int | None = None,
    progress: bool = True,
    registry: Path | None = None,
) -> dict[str, Any]:
    """Fill a store (a fresh one unless ``store_url`` names one with items), serve, measure."""
    from state.store import Store
    from stream.broker import free_port

    with tempfile.TemporaryDirectory(prefix="moodwire-bench-dash-") as tmp_:
        tmp = Path(tmp_)
        url = store_url or f"sqlite:///{tmp / 'moodwire.db'}"
        have = Store(url).count_items()
        if have:
            filled: dict[str, Any] = {"items": have, "filled": False}
        else:
            filled = {**fill_store(url, items, progress=progress), "filled": True}
        run = settings.with_overrides(
            data_dir=tmp,
            store_url=url,
            index_dir=tmp / "index",
            registry=registry or tmp / "registry",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOODWIRE_")}
        env |= run.to_env() | {"PYTHONUNBUFFERED": "1"}
        log = tmp / "dashboard.log"
        port = port or free_port()
        t0 = time.perf_counter()
        try:
            with serve_dashboard(env, port, log) as base:
                started = time.perf_counter() - t0
                figures = measure(base, warm_loads=warm_loads)
        except Exception as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{exc}\n-- dashboard log --\n{tail}") from exc
    first = figures["overview_first_paint_cold_s"]
    return {
        **filled,
        "store": url if store_url else "sqlite (temporary)",
        "server_start_s": round(started, 2),
        **figures,
        "target_first_paint_s": TARGET_FIRST_PAINT_S,
        "meets_target": first < TARGET_FIRST_PAINT_S
        and figures["overview_first_paint_warm_median_s"] < TARGET_FIRST_PAINT_S,
    }
