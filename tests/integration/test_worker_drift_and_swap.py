"""The worker follows promotions and rollbacks within one batch, and reports drift.

Real broker, real model, real registry and store: a worker subprocess for the
hot swap (promoted in-process, rolled back with the `moodwire` CLI), and an
in-process worker for drift (so the embedding detector can use short windows).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import pytest
from helpers import (
    log_events,
    moodwire_cli,
    operator_env,
    produce_items,
    read_all,
    settings_env,
    start_process,
    stop_process,
    wait_until,
)

from learner.drift import StreamMonitor
from moodwire.processes.worker import build_worker, stream_monitor
from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store
from stream.schemas import ControlMessage
from stream.scorer import Scorer, load_serving
from stream.synthetic import labelled_headlines
from stream.worker import Worker

pytestmark = pytest.mark.integration


def _headlines(prefix: str, n: int, seed: int) -> list[dict]:
    return [
        {"id": f"{prefix}-{i}", "text": r["text"]}
        for i, r in enumerate(labelled_headlines(n, seed=seed))
    ]


def _versions(store: Store, items: list[dict]) -> set[str]:
    return {row["model_version"] for row in store.items_by_ids([i["id"] for i in items]).values()}


# -- hot swap -------------------------------------------------------------------------------


def test_promote_and_rollback_reach_the_worker_within_one_batch(
    settings: Settings, model_registry: Path, tmp_path: Path
) -> None:
    # The session's registry serves v1 for every test: this one works on a copy.
    root = tmp_path / "registry"
    shutil.copytree(model_registry, root)
    settings = settings.with_overrides(registry=root)
    registry = Registry(root)
    env = settings_env(settings)
    store = Store(settings.resolved_store_url())
    log = tmp_path / "worker.log"
    n = 40
    lots = [_headlines(f"lot{k}", n, seed=10 + k) for k in range(3)]

    proc = start_process(["worker"], env, log)
    try:
        produce_items(settings.bootstrap_servers, settings.topics.news, lots[0])
        wait_until(lambda: store.count_items() >= n, 120, "the first lot stored")
        assert _versions(store, lots[0]) == {"v1"}

        # v2: the same weights under a new name; the name is what the items record.
        v1_dir = registry.path("v1")
        v2 = registry.write_version(
            lambda d: shutil.copytree(
                v1_dir, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("card.json")
            ),
            {"kind": "test", "parent": "v1"},
        )
        registry.promote(v2)
        # Produced only after the promotion returned: every one must be scored by v2.
        produce_items(settings.bootstrap_servers, settings.topics.news, lots[1])
        wait_until(lambda: store.count_items() >= 2 * n, 120, "the second lot stored")
        assert _versions(store, lots[1]) == {v2}

        operator = operator_env(settings.resolved_store_url(), "tester")
        done = moodwire_cli(["rollback", "--reason", "test"], env={**env, **operator})
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["serving"] == "v1"
        produce_items(settings.bootstrap_servers, settings.topics.news, lots[2])
        wait_until(lambda: store.count_items() >= 3 * n, 120, "the third lot stored")
        assert _versions(store, lots[2]) == {"v1"}
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]

    assert _versions(store, lots[0]) == {"v1"}  # nothing was re-scored
    all_ids = {i["id"] for lot in lots for i in lot}
    assert sorted(store.item_ids()) == sorted(all_ids)
    scored = [
        json.loads(r.value) for r in read_all(settings.bootstrap_servers, settings.topics.scored)
    ]
    assert sorted(s["id"] for s in scored) == sorted(all_ids), "news.scored: gaps or duplicates"
    by_id = {s["id"]: s["model_version"] for s in scored}
    assert {by_id[i["id"]] for i in lots[1]} == {v2}
    swaps = [(e["from"], e["to"], e["cached"]) for e in log_events(log, "model_swapped")]
    assert swaps == [("v1", v2, False), (v2, "v1", True)]
    assert log_events(log, "model_swap_failed") == []


# -- drift ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer(model_registry: Path) -> Scorer:
    """The serving model, loaded once for the module's in-process workers."""
    return load_serving(model_registry, device="cpu")


def _gibberish(n: int, seed: int) -> list[dict]:
    """Strings of random letters: nothing like a headline, in the frozen embedding space."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def word() -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))

    return [{"id": f"shifted-{i}", "text": " ".join(word() for _ in range(8))} for i in range(n)]


def _run(
    settings: Settings,
    scorer: Scorer,
    phases: list[list[dict]],
    monitor: StreamMonitor | None = None,
) -> tuple[Store, Worker]:
    """An in-process worker through ``phases``, each produced once the previous is stored."""
    worker, close = build_worker(settings, scorer=scorer)
    # The monitor build_worker made follows the settings.
    assert (worker.monitor.confidence, worker.monitor.embedding, worker.monitor.warmup) == (
        settings.drift_confidence,
        settings.drift_embedding,
        settings.drift_warmup,
    )
    if monitor is not None:
        worker.monitor = monitor
    store = Store(settings.resolved_store_url())
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        total = 0
        for items in phases:
            produce_items(settings.bootstrap_servers, settings.topics.news, items)
            total += len(items)
            wait_until(lambda t=total: store.count_items() >= t, 120, f"{total} items stored")
    finally:
        stop.set()
        thread.join(60)
        close()  # flushes the producer, so every announcement is on the topic
    assert not thread.is_alive()
    return store, worker


NORMAL, SHIFTED = 150, 60


def test_an_abrupt_shift_is_stored_and_announced_on_the_control_topic(
    settings: Settings, scorer: Scorer
) -> None:
    settings = settings.with_overrides(drift_warmup=50, drift_cooldown=5000)
    monitor = stream_monitor(
        settings,
        # The default reference (500 items) makes for a slow test on a CPU; a shorter
        # one detects the same shift.
        embedding_reference=120,
        embedding_window=30,
    )
    normal = _headlines("normal", NORMAL, seed=21)
    shifted = _gibberish(SHIFTED, seed=22)
    store, worker = _run(settings, scorer, [normal, shifted], monitor)
    assert worker.totals.drift_events == len(store.drift_event_rows())

    events = store.drift_event_rows()
    assert events, "no drift event for an abrupt change of text style"
    # Nothing fires on the steady stream (positions count the items the worker saw).
    assert all(e["position"] >= NORMAL for e in events), events
    (emb,) = [e for e in events if e["signal"] == "embedding"]
    assert emb["detector"] == "embedding_shift" and emb["position"] < NORMAL + SHIFTED
    assert emb["details"]["item_id"].startswith("shifted-")
    assert emb["origin"].startswith("worker:") and emb["model_version"] == "v1"

    control = [
        ControlMessage.model_validate_json(r.value)
        for r in read_all(settings.bootstrap_servers, settings.topics.control)
    ]
    assert len(control) == len(events)
    assert {m.action for m in control} == {"drift"}
    assert {m.actor for m in control} == {emb["origin"]} and {m.version for m in control} == {"v1"}
    assert any(m.reason and m.reason.startswith("embedding_shift on embedding") for m in control)


def test_with_every_detector_off_the_same_shift_raises_nothing(
    settings: Settings, scorer: Scorer
) -> None:
    settings = settings.with_overrides(
        drift_confidence="off", drift_label_mix="off", drift_embedding="off", drift_warmup=0
    )
    phases = [_headlines("normal", NORMAL, seed=21), _gibberish(SHIFTED, seed=22)]
    store, worker = _run(settings, scorer, phases)
    assert worker.totals.drift_events == 0
    assert store.count_items() == NORMAL + SHIFTED
    assert store.drift_event_rows() == []
    assert read_all(settings.bootstrap_servers, settings.topics.control) == []
