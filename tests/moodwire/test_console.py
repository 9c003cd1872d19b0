"""The demo's console: one line per alert episode (again only on a change of severity), each
drift event and model decision once, a status line, and the same as JSON for scripts."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from moodwire.console import Console, Event
from moodwire.demo import Watch
from state.registry import Registry
from state.store import Store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _alert(revision: int, severity: str, statistic: float) -> dict:
    start = T0 + timedelta(minutes=revision)
    return {
        "id": "al-init", "kind": "negative_surge", "scope": "entity", "entity": "INIT",
        "topic": None, "severity": severity, "window_start": start.isoformat(),
        "window_end": (start + timedelta(minutes=1)).isoformat(),
        "first_window_start": T0.isoformat(), "statistic": statistic, "baseline": 0.25,
        "value": 0.8, "n": 30, "revision": revision, "signals": {},
        "evidence": {"item_ids": [], "n": 30, "top": [{"text": "Initech sued over breach"}]},
    }  # fmt: skip


def test_an_episode_is_one_line_and_again_only_when_its_severity_changes(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    registry = Registry(tmp_path / "registry")
    watch = Watch(store, registry, started_at=0.0, fed=[0])
    lines = []
    for revision, severity, z in [(1, "warning", 4.5), (2, "warning", 4.9), (3, "critical", 7.1),
                                  (4, "critical", 8.0), (5, "critical", 6.5)]:  # fmt: skip
        store.upsert_alert(_alert(revision, severity, z))
        _, events = watch.step()
        lines += [e.text for e in events if e.kind == "alert"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("alert       warning negative_surge on INIT: z=+4.5")
    assert lines[1].startswith("alert       now critical negative_surge on INIT: z=+7.1")
    assert "e.g. 'Initech sued over breach'" in lines[0]


def test_drift_events_and_decisions_are_said_once_and_counted(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.audit("demo", "promote", "v1", "bootstrap", {})  # before the watch: not this run's
    watch = Watch(store, Registry(tmp_path / "registry"), started_at=0.0, fed=[0])
    store.record_drift({"detector": "adwin", "signal": "error_rate", "statistic": 0.2,
                        "window": 100, "position": 5, "origin": "learner"})  # fmt: skip
    gate = {
        "new": {"serving": 0.44, "candidate": 0.91},
        "old": {"serving": 0.97, "candidate": 0.97},
    }
    store.audit("learner", "promote", "v2", "drift", {"gate": gate})
    store.audit("learner", "candidate_rejected", "v3", "no gain on new data", {})
    snapshot, events = watch.step()
    texts = [e.text for e in events]
    assert texts == [
        "drift       adwin on error_rate (statistic 0.2), seen by learner",
        "model       v2 promoted by learner: new data 0.44 -> 0.91, old data 0.97 -> 0.97",
        "model       v3 rejected: no gain on new data",
    ]
    assert snapshot.retrains == 2 and snapshot.promotions == 1
    assert watch.step()[1] == []  # nothing new: nothing said


def test_plain_and_json_modes_say_the_same_things(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    watch = Watch(store, Registry(tmp_path / "registry"), started_at=time.monotonic(), fed=[5])
    snapshot, _ = watch.step()
    plain, js = io.StringIO(), io.StringIO()
    for out, mode in ((plain, "plain"), (js, "json")):
        console = Console(mode, out=out)
        console.say("dashboard   http://127.0.0.1:8501")
        console.status(snapshot, force=True)
        console.event(Event("alert", "alert       critical negative_surge on INIT", {"id": "a"}))
        console.final({"items": 0})
    assert plain.getvalue().splitlines()[0] == "dashboard   http://127.0.0.1:8501"
    assert plain.getvalue().splitlines()[1].startswith("status      0m")
    assert "lag 5" in plain.getvalue()
    rows = [json.loads(line) for line in js.getvalue().splitlines()]
    assert [r.get("event") for r in rows[:3]] == ["setup", "status", "alert"]
    assert rows[-1] == {"items": 0}  # the last line is the store's counts, as in plain


def test_auto_mode_is_plain_off_a_terminal() -> None:
    assert Console("auto", out=io.StringIO()).mode == "plain"
