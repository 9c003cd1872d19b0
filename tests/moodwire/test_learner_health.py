"""A learner's /healthz and /readyz: a standby answers and says so; the active one is ready
once its model is loaded (and a worker once it has a model and partitions). Real HTTP on
loopback, a real registry and a real lock file."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from moodwire.processes.leader import LearnerRole
from moodwire.processes.learner import liveness_s
from moodwire.settings import Settings
from state.locks import FileLock, wait_acquire
from state.registry import Registry
from stream.health import HealthServer
from stream.outage import Health


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_standby_is_ready_and_says_so_then_a_leader_reports_its_model(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "registry" / ".learner.lock")
    role = LearnerRole(lock)
    server = HealthServer(Health("learner"), role, port=0).start()
    try:
        code, body = _get(server.port, "/readyz")
        assert (code, body["role"]) == (200, "standby")
        role.lead(lambda: (False, {"model_version": None}))  # holds the lock, still loading
        assert _get(server.port, "/readyz")[0] == 503
        role.lead(lambda: (True, {"model_version": "v7"}))
        code, body = _get(server.port, "/readyz")
        assert (code, body["role"], body["model_version"]) == (200, "leader", "v7")
    finally:
        server.close()


def test_a_standby_waiting_on_the_lock_beats_so_healthz_stays_alive(tmp_path: Path) -> None:
    lock_path = tmp_path / "registry" / ".learner.lock"
    active = FileLock(lock_path)
    assert active.try_acquire()
    health = Health("learner")
    standby = FileLock(lock_path)
    server = HealthServer(health, LearnerRole(standby), stale_s=0.5)
    server.start()
    stop = threading.Event()
    got: list[bool] = []
    waiter = threading.Thread(
        target=lambda: got.append(wait_acquire(standby, stop, poll_s=0.05, beat=health.beat))
    )
    try:
        waiter.start()
        time.sleep(1.0)  # twice stale_s: only the standby's beats keep it alive
        assert _get(server.port, "/healthz")[0] == 200
        assert got == []  # still waiting
        active.release()
        waiter.join(5)
        assert got == [True]
        time.sleep(1.0)  # nobody beats now: dead
        assert _get(server.port, "/healthz")[0] == 503
    finally:
        stop.set()
        waiter.join(5)
        standby.release()
        active.release()
        server.close()


def test_liveness_covers_the_training_budget() -> None:
    # The loop does not beat while a candidate trains: /healthz must not call that dead.
    assert liveness_s(Settings(learner={"time_budget_s": 600})) == 720.0
    assert liveness_s(Settings(learner={"time_budget_s": None})) == 3720.0


@pytest.mark.integration
def test_moodwire_learner_answers_as_standby_then_as_leader(
    settings: Settings, tmp_path: Path
) -> None:
    """The real command: its probes answer while another learner holds the lock."""
    from helpers import log_events, settings_env, start_process, stop_process, wait_until

    from stream.broker import free_port

    root = tmp_path / "registry"
    shutil.copytree(settings.resolved_registry(), root)
    port = free_port()
    s = settings.with_overrides(registry=root, metrics_port=port)
    env = {**settings_env(s), "MOODWIRE_METRICS_PORT": str(port)}
    other = FileLock(root / ".learner.lock")
    assert other.try_acquire()  # "another learner" holds the lock
    log = tmp_path / "learner.log"
    proc = start_process(["learner"], env, log)
    try:
        wait_until(lambda: log_events(log, "learner_standby"), 90, "the learner to stand by")
        wait_until(lambda: _answers(port), 30, "its health server")
        assert _get(port, "/healthz")[0] == 200
        code, body = _get(port, "/readyz")
        assert (code, body["role"]) == (200, "standby"), body
        other.release()
        wait_until(lambda: _get(port, "/readyz")[1]["role"] == "leader", 120, "it to take over")
        code, body = _get(port, "/readyz")
        assert code == 200 and body["model_version"] == Registry(root).serving(), body
        assert log_events(log, "learner_active")
    finally:
        other.release()
        assert stop_process(proc) == 0, log.read_text()[-3000:]


def _answers(port: int) -> bool:
    try:
        _get(port, "/healthz")
    except OSError:
        return False
    return True


def test_a_worker_is_ready_only_with_a_model_and_partitions() -> None:
    from types import SimpleNamespace

    from moodwire.processes.worker import worker_readiness

    worker = SimpleNamespace(assigned_partitions=0, scorer=SimpleNamespace(version="v1"))
    ready = worker_readiness(worker)
    # One worker more than partitions: alive, but nothing to do.
    assert ready() == (False, {"model_version": "v1", "partitions": 0})
    worker.assigned_partitions = 2
    assert ready() == (True, {"model_version": "v1", "partitions": 2})
    worker.scorer.version = None
    assert ready()[0] is False
