"""Who may train the model: the real learner on the real broker, fed forged and signed
labels and commands. Forged ones change nothing and are counted, dead-lettered and
(commands) audited as refused; signed ones from allowed origins work."""

from __future__ import annotations

import json
import shutil
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import (
    TEST_LABELLER,
    log_events,
    produce,
    settings_env,
    signed,
    start_process,
    stop_process,
    wait_until,
)
from test_learner import _fresh_in_state, _own_registry

from moodwire.processes.learner import learner_dir
from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store
from stream.broker import free_port
from stream.synthetic import demo_feed

pytestmark = pytest.mark.integration


def _labels(texts: list[str]) -> list[dict]:
    return [{"text": t, "label": "neutral", "source": "test", "annotator": "t"} for t in texts]


def _refused_metrics(port: int) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("moodwire_refused_total{"):
            labels, value = line[len("moodwire_refused_total{") :].split("} ")
            parts = dict(p.split("=", 1) for p in labels.split(","))
            key = tuple(parts[k].strip('"') for k in ("kind", "origin", "reason"))
            out[key] = float(value)
    return out


def _command(action: str, version: str, expect: str, *, ago_s: float = 0.0) -> dict:
    ts = datetime.now(UTC) - timedelta(seconds=ago_s)
    return {
        "action": action,
        "version": version,
        "actor": "mallory-or-ann",
        "reason": "test",
        "details": {"expect_serving": expect},
        "ts": ts.isoformat(),
    }


def test_forged_labels_and_commands_change_nothing_and_signed_ones_work(
    settings: Settings, tmp_path: Path
) -> None:
    s = _own_registry(settings, tmp_path, min_new_labels=10_000)  # no retrain in this test
    registry = Registry(s.resolved_registry())
    assert registry.serving() == "v1"
    # A second version to switch to: the same files, so it loads and passes its smoke batch.
    v2 = registry.write_version(
        lambda d: shutil.copytree(registry.path("v1"), d, dirs_exist_ok=True),
        {"kind": "test", "parent": "v1"},
    )
    texts = [i["text"] for i in demo_feed(400, seed=5)]
    good, wrong_key, unlisted, unsigned = texts[:30], texts[30:40], texts[40:50], texts[50:60]
    port = free_port()
    env = settings_env(s) | {"MOODWIRE_METRICS_PORT": str(port)}
    log = tmp_path / "learner.log"
    proc = start_process(["learner"], env, log)
    try:
        wait_until(lambda: log_events(log, "learner_active"), 120, "the learner to start")
        labels = (
            signed(_labels(good))
            + signed(_labels(wrong_key), key="not-the-labeller-key")
            + signed(_labels(unlisted), origin="labeller:evil", key="evil-own-key")
            + [json.dumps(p).encode() for p in _labels(unsigned)]
        )
        produce(s.bootstrap_servers, s.topics.labels, labels)
        store = Store(s.resolved_store_url())
        wait_until(
            lambda: (
                store.stats()["rejected_by_reason"].get("origin", 0) == 30
                and _fresh_in_state(s) == 30
            ),
            120,
            "the forged labels refused and the signed ones learned",
        )
        assert store.stats()["labels"]["total"] == 30  # only the signed ones are stored
        state = json.loads((learner_dir(s) / "state.json").read_text(encoding="utf-8"))
        fresh = {t for t, _ in state["learner"]["fresh_train"] + state["learner"]["fresh_holdout"]}
        assert fresh == set(good)  # nothing forged is trained on or held out for the gates
        refused = _refused_metrics(port)
        assert refused[("label", TEST_LABELLER, "bad_signature")] == 10
        assert refused[("label", "other", "origin_not_allowed")] == 10  # forged names: bounded
        assert refused[("label", "none", "unsigned")] == 10
        # Logged once per origin and reason, not once per message.
        said = log_events(log, "label_refused")
        assert sorted((e["origin"], e["reason"]) for e in said) == [
            ("labeller:test", "bad_signature"),
            ("none", "unsigned"),
            ("other", "origin_not_allowed"),
        ]

        # Forged commands: a wrong key, unsigned, stale, and a labeller (not a control origin).
        forged = (
            signed([_command("promote", v2, "v1")], origin="dashboard", key="guessed")
            + [json.dumps(_command("rollback", "v1", "v1")).encode()]
            + signed([_command("promote", v2, "v1", ago_s=3600)], origin="dashboard")
            + signed([{**_command("retrain", v2, "v1")}], origin=TEST_LABELLER)
            + signed([_command("promote", v2, "v1")], origin="worker")  # its own key
        )
        produce(s.bootstrap_servers, s.topics.control, forged)
        wait_until(
            lambda: len(store.audit_rows("control_refused")) == 5, 60, "the forgeries audited"
        )
        rows = store.audit_rows("control_refused")
        assert sorted((r["actor"], r["target"], r["details"]["refusal"]) for r in rows) == [
            ("unverified:?", "rollback", "unsigned"),
            ("unverified:dashboard", "promote", "bad_signature"),
            ("unverified:dashboard", "promote", "stale"),
            (f"unverified:{TEST_LABELLER}", "retrain", "origin_not_allowed"),
            ("worker", "promote", "action_not_allowed"),  # signed, but a worker may not
        ]
        assert registry.serving() == "v1" and not store.audit_rows("promote")
        assert not store.audit_rows("control_retrain")
        refused = _refused_metrics(port)
        assert refused[("control", "dashboard", "bad_signature")] == 1
        assert refused[("control", "dashboard", "stale")] == 1
        assert refused[("control", "worker", "action_not_allowed")] == 1
        assert store.stats()["rejected_by_reason"]["origin"] == 35  # dead-lettered too

        # Signed, from allowed origins: the dashboard promotes v2, the CLI rolls back.
        def command(values: list[bytes]) -> None:  # one partition: taken in this order
            produce(s.bootstrap_servers, s.topics.control, values, keys=[b"ops"] * len(values))

        promote = signed([_command("promote", v2, "v1")], origin="dashboard")
        command(promote)
        wait_until(lambda: registry.serving() == v2, 60, "the signed promotion")
        wait_until(
            lambda: any(e["version"] == v2 for e in log_events(log, "learner_follows_serving")),
            120,
            "the learner to follow it",
        )
        # A new request that expects what no longer serves does nothing (compare and swap).
        command(signed([_command("promote", v2, "v1")], origin="dashboard"))
        command(signed([_command("rollback", "v1", v2)], origin="cli"))
        wait_until(lambda: registry.serving() == "v1", 60, "the signed rollback")
        # The first promotion's bytes sent again (a replay) are refused, and change nothing.
        command(promote)
        wait_until(lambda: len(store.audit_rows("control_refused")) == 6, 60, "the replay audited")
        assert store.audit_rows("control_refused")[-1]["details"]["refusal"] == "replayed"
        assert registry.serving() == "v1"
    finally:
        stop_process(proc)
    switches = [
        (r["actor"], r["action"], r["target"], r["details"]["via"])
        for r in store.audit_rows()  # oldest first
        if r["action"] in ("promote", "rollback")
    ]
    assert switches == [
        ("dashboard", "promote", v2, "control"),
        ("cli", "rollback", "v1", "control"),
    ]
    assert not log_events(log, "learner_step_failed_retrying")
