"""The learner process on the real broker, model and store: labels in, candidates out.

Each test works on its own copy of the session registry, so promotions here
never change what other tests serve.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    last_json,
    log_events,
    moodwire_cli,
    operator_env,
    produce,
    settings_env,
    signed,
    start_process,
    stop_process,
    wait_until,
)

from learner.data import LabelledText
from moodwire.processes.learner import learner_dir, seed_memory
from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store
from stream.broker import free_port
from stream.synthetic import demo_feed, labelled_headlines

pytestmark = pytest.mark.integration


def _own_registry(settings: Settings, tmp_path: Path, **learner: object) -> Settings:
    root = tmp_path / "registry"
    shutil.copytree(settings.resolved_registry(), root)
    cfg = dataclasses.replace(
        settings.learner,
        **{"min_new_labels": 40, "min_holdout": 8, "retrain_every": 100_000, **learner},
    )
    s = settings.with_overrides(registry=root, learner=cfg)
    old = [LabelledText(r["text"], r["label"]) for r in labelled_headlines(300, seed=11)]
    seed_memory(s, old[:200], old[200:])
    return s


def _fresh_in_state(s: Settings) -> int:
    """Fresh labels in the learner's persisted state (0 before it first saves one)."""
    path = learner_dir(s) / "state.json"
    if not path.is_file():
        return 0
    state = json.loads(path.read_text(encoding="utf-8"))["learner"]
    return len(state.get("fresh_train", [])) + len(state.get("fresh_holdout", []))


def _chatter_labels(n: int) -> list[bytes]:
    items = [i for i in demo_feed(4 * n, seed=21, drift_at=0.0) if i["meta"]["phase"] == "chatter"]
    return signed(
        [
            {
                "text": i["text"],
                "label": i["meta"]["true_label"],
                "source": "test",
                "annotator": "t",
            }
            for i in items[:n]
        ]
    )


def test_labels_and_a_retrain_command_give_a_promoted_version(
    settings: Settings, tmp_path: Path
) -> None:
    # Bounded by epochs, not the clock, so the outcome does not depend on the machine.
    s = _own_registry(settings, tmp_path, time_budget_s=600.0, epochs=2.0, lr=2e-4)
    port = free_port()
    env = settings_env(s) | {"MOODWIRE_METRICS_PORT": str(port)}
    log = tmp_path / "learner.log"
    proc = start_process(["learner"], env, log)
    try:
        wait_until(lambda: log_events(log, "learner_active"), 90, "the learner to start")
        labels = _chatter_labels(250)
        bad = [b"{not json", json.dumps({"label": "positive"}).encode()]  # no id, no text
        produce(s.bootstrap_servers, s.topics.labels, labels + bad)
        store = Store(s.resolved_store_url())
        wait_until(lambda: store.stats()["labels"]["total"] == 250, 60, "labels stored")
        done = moodwire_cli(
            ["retrain", "--reason", "test"],
            env={**env, **operator_env(s.resolved_store_url(), "alice")},
        )
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: log_events(log, "model_promoted") or log_events(log, "candidate_rejected"),
            180,
            "a decision",
        )
        assert len(log_events(log, "label_rejected")) == 2
        # The retrain's duration and how it ended, on the learner's /metrics (observed
        # once the decision is saved, just after its log line).
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(
            lambda: b"moodwire_retrain_seconds_count 1.0" in urllib.request.urlopen(url).read(),
            30,
            "the retrain observed",
        )
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        stop_process(proc)
    outcomes = [ln for ln in text.splitlines() if ln.startswith("moodwire_retrain_outcomes_total")]
    assert outcomes == ['moodwire_retrain_outcomes_total{outcome="promoted"} 1.0'], outcomes
    promoted = log_events(log, "model_promoted")
    assert promoted, log_events(log, "candidate_rejected")
    registry = Registry(s.resolved_registry())
    version = registry.serving()
    assert version == promoted[0]["version"] != "v1"
    card = registry.card(version)
    assert card["decision"] == "promote" and card["parent"] == "v1"
    assert card["gate"]["new"]["candidate"] > card["gate"]["new"]["serving"]
    assert card["trigger"].startswith("operator alice")
    stats = last_json(moodwire_cli(["stats"], env=env).stdout)
    assert stats["labels"]["total"] == 250 and stats["labels"]["by_source"] == {"test": 250}
    assert stats["promotions"]["promoted"] == 1  # the learner's (v1 was made by a fixture)
    actions = [(r["actor"], r["action"]) for r in Store(s.resolved_store_url()).audit_rows()]
    assert ("alice", "retrain") in actions and ("learner", "promote") in actions


def test_learner_killed_mid_training_leaves_serving_untouched_and_resumes(
    settings: Settings, tmp_path: Path
) -> None:
    s = _own_registry(settings, tmp_path, time_budget_s=300.0, epochs=50.0)
    env = settings_env(s)
    registry = Registry(s.resolved_registry())
    before = ([v.name for v in registry.versions()], registry.serving())
    log = tmp_path / "learner.log"
    proc = start_process(["learner"], env, log)
    try:
        wait_until(lambda: log_events(log, "learner_active"), 90, "the learner to start")
        produce(s.bootstrap_servers, s.topics.labels, _chatter_labels(120))
        # All 120 learned (and persisted) before the retrain: otherwise the command can
        # come in a poll with only some of them, and the rest wait in Kafka for a later one.
        wait_until(lambda: _fresh_in_state(s) == 120, 90, "the labels to be learned")
        done = moodwire_cli(
            ["retrain", "--reason", "test"], env={**env, **operator_env(s.resolved_store_url())}
        )
        assert done.returncode == 0, done.stderr
        wait_until(lambda: log_events(log, "retrain_started"), 60, "training to start")
    finally:
        stop_process(proc, signal.SIGKILL)
    assert ([v.name for v in registry.versions()], registry.serving()) == before
    assert not list((s.resolved_registry() / "versions").glob(".incoming-*"))

    # A standby waits while another holds the lock, then takes over, with the labels it had.
    # A trains slowly (it is killed while training), B quickly.
    slow = dataclasses.replace(s.learner, time_budget_s=120.0, epochs=50.0)
    quick = dataclasses.replace(s.learner, time_budget_s=10.0, epochs=1.0)
    env2 = settings_env(s.with_overrides(learner=quick))
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_process(["learner"], settings_env(s.with_overrides(learner=slow)), log_a)
    b = None
    try:
        wait_until(lambda: log_events(log_a, "learner_active"), 90, "learner A to start")
        b = start_process(["learner"], env2, log_b)
        wait_until(lambda: log_events(log_b, "learner_standby"), 60, "learner B to wait")
        assert not log_events(log_b, "learner_active")
        assert log_events(log_a, "retrain_started")  # A resumed the interrupted retrain
        stop_process(a, signal.SIGKILL)
        wait_until(lambda: log_events(log_b, "learner_active"), 60, "learner B to take over")
        active = log_events(log_b, "learner_active")[0]
        assert active["fresh"] == 120  # the labels survived the kill
        wait_until(
            lambda: log_events(log_b, "model_promoted") or log_events(log_b, "candidate_rejected"),
            120,
            "B to finish the interrupted retrain",
        )
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                stop_process(p)
    names = [v.name for v in registry.versions()]
    assert len(names) == len(before[0]) + 1
    assert registry.card(names[-1])["decision"] in ("promote", "reject")


def test_a_full_registry_disk_is_waited_out_and_the_candidate_written_after(
    settings: Settings, tmp_path: Path
) -> None:
    from helpers import small_disk

    with small_disk(tmp_path / "disk", "400m") as disk:
        root = disk / "registry"
        # v1: about 185 MB (90 MB of weights, 94 MB of its serving export)
        shutil.copytree(settings.resolved_registry(), root)
        s = _own_registry(
            settings.with_overrides(registry=root),
            tmp_path,
            time_budget_s=600.0,
            epochs=1.0,
            lr=2e-4,
        )
        s = s.with_overrides(registry=root, retry_max_s=2.0)
        filler = disk / "filler"  # what is left (20 MB) is too little for a second version
        chunk = b"\0" * (1 << 20)
        with open(filler, "wb") as f:
            for _ in range(shutil.disk_usage(disk).free // len(chunk) - 20):
                f.write(chunk)
        env = settings_env(s)
        log = tmp_path / "learner.log"
        proc = start_process(["learner"], env, log)
        try:
            wait_until(lambda: log_events(log, "learner_active"), 90, "the learner to start")
            produce(s.bootstrap_servers, s.topics.labels, _chatter_labels(120))
            wait_until(lambda: _fresh_in_state(s) == 120, 90, "the labels to be learned")
            done = moodwire_cli(
                ["retrain", "--reason", "disk"], env={**env, **operator_env(s.resolved_store_url())}
            )
            assert done.returncode == 0, done.stderr
            wait_until(
                lambda: any(
                    e.get("dependency") == "registry" for e in log_events(log, "dependency_down")
                ),
                300,
                "the write to fail on the full disk",
            )
            assert proc.poll() is None
            assert [v.name for v in Registry(root).versions()] == ["v1"]
            assert not list((root / "versions").glob(".incoming-*"))  # no half version left
            filler.unlink()  # an operator frees space
            wait_until(
                lambda: log_events(log, "model_promoted") or log_events(log, "candidate_rejected"),
                120,
                "the candidate written once there is room",
            )
            assert proc.poll() is None
        finally:
            stop_process(proc)
        names = [v.name for v in Registry(root).versions()]
        assert names == ["v1", "v2"]
        Registry(root).verify("v2")  # whole and proven: written after the space came back


@pytest.mark.parametrize("damaged", ["state.json", "replay.json"])
def test_a_damaged_learner_state_file_is_one_clear_line_not_a_traceback(
    settings: Settings, tmp_path: Path, damaged: str
) -> None:
    s = _own_registry(settings, tmp_path)
    state = learner_dir(s)
    state.mkdir(parents=True, exist_ok=True)
    (state / "state.json").write_text(json.dumps({"learner": {}, "label_seq": 0}))
    (state / damaged).write_text('{"kind": "Reservoir", "capacity": ')  # cut off mid-write
    res = moodwire_cli(["learner"], env=settings_env(s), timeout=180)
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("moodwire learner:")]
    assert damaged in line and "delete it" in line and "Traceback" not in res.stderr
