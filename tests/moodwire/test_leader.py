"""One active learner and one active alerter across hosts: PostgreSQL advisory locks, for real.

A holder is SIGKILLed and the standby takes over within seconds; a holder whose
connection is cut learns that it lost the lock; a real `moodwire learner`
waits on standby (and says so on /readyz) while another holds the lock.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import settings_env, start_process, stop_process, wait_until

from moodwire.processes.leader import alerter_lock, learner_lock
from moodwire.settings import Settings
from state.locks import AdvisoryLock, FileLock
from stream.active_alerter import ActiveAlerter
from stream.broker import free_port

_HOLD = """
import sys, time
from state.locks import AdvisoryLock
lock = AdvisoryLock(sys.argv[1], sys.argv[2])
assert lock.try_acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold_in_child(url: str, name: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, url, name], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_the_standby_takes_the_lock_within_seconds_of_a_sigkill(pg_fresh: str) -> None:
    child = _hold_in_child(pg_fresh, "moodwire:test")
    standby = AdvisoryLock(pg_fresh, "moodwire:test")
    other = AdvisoryLock(pg_fresh, "moodwire:other")  # another name is another lock
    try:
        assert not standby.try_acquire() and not standby.held()
        assert other.try_acquire()
        child.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        child.wait(10)
        while not standby.try_acquire():
            assert time.monotonic() - killed < 10, "the lock outlived its holder"
            time.sleep(0.05)
        took = time.monotonic() - killed
        print(f"\nadvisory lock taken over {took:.2f} s after SIGKILL of its holder")
        assert standby.held()
    finally:
        child.kill()
        standby.release()
        other.release()
    assert standby.try_acquire()  # released and taken again
    standby.release()


def test_a_holder_whose_connection_is_cut_knows_it_lost_the_lock(pg_fresh: str) -> None:
    holder, standby = AdvisoryLock(pg_fresh, "moodwire:cut"), AdvisoryLock(pg_fresh, "moodwire:cut")
    assert holder.try_acquire() and holder.held()
    engine = sa.create_engine(pg_fresh)
    with engine.begin() as conn:  # an administrator (or a network cut) ends its session
        ended = conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
            )
        ).all()
    engine.dispose()
    assert ended
    wait_until(lambda: standby.try_acquire(), 10, "the standby takes the lock")
    assert not holder.held()  # it asks the server: the session is gone
    assert not holder.try_acquire()  # and the standby holds it now
    standby.release()


def test_one_alerter_runs_the_rules_the_other_takes_over_when_it_goes(pg_fresh: str) -> None:
    built: list[str] = []

    class Rules:
        def __init__(self, who: str) -> None:
            built.append(who)
            self.who = who

        def step(self) -> list[dict]:
            return [{"by": self.who}]

    def settings(group: str) -> Settings:
        return Settings(store_url=pg_fresh, consumer_group=group)

    a = ActiveAlerter(lambda: Rules("a"), alerter_lock(settings("g")), retry_s=0)
    b = ActiveAlerter(lambda: Rules("b"), alerter_lock(settings("g")), retry_s=0)
    c = ActiveAlerter(lambda: Rules("c"), alerter_lock(settings("other")), retry_s=0)
    assert a.step() == [{"by": "a"}] and b.step() == [] and c.step() == [{"by": "c"}]
    assert a.step() == [{"by": "a"}] and b.step() == []
    a.close()
    assert b.step() == [{"by": "b"}] and a.step() == []
    assert built == ["a", "c", "b"]  # built afresh (from the store) by the one taking over
    b.close()
    c.close()


def test_the_lock_kinds_follow_the_store(tmp_path: Path) -> None:
    local = Settings(data_dir=tmp_path)
    assert isinstance(learner_lock(local), FileLock)
    assert learner_lock(local).name == str(tmp_path / "registry" / ".learner.lock")  # as before
    assert isinstance(alerter_lock(local), FileLock)
    assert alerter_lock(Settings(store_url="sqlite://")) is None
    pg = Settings(data_dir=tmp_path, store_url="postgresql://db/m")
    assert isinstance(learner_lock(pg), AdvisoryLock)
    assert isinstance(alerter_lock(pg), AdvisoryLock)
    shared = Settings(data_dir=tmp_path, registry_url="postgresql://db/reg")
    assert isinstance(learner_lock(shared), AdvisoryLock)


def _readyz(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return {}


@pytest.mark.integration
def test_a_learner_stands_by_while_another_leads_then_leads_and_its_death_frees_the_lock(
    settings: Settings, pg_fresh: str, tmp_path: Path
) -> None:
    port = free_port()
    s = settings.with_overrides(store_url=pg_fresh, metrics_port=port)
    env = settings_env(s) | {"MOODWIRE_METRICS_PORT": str(port)}
    other = learner_lock(s)  # "the other host's learner"
    assert other.try_acquire()
    log = tmp_path / "learner.log"
    proc = start_process(["learner"], env, log)
    try:
        wait_until(lambda: _readyz(port).get("role") == "standby", 60, "a standby /readyz")
        time.sleep(2)
        assert _readyz(port)["role"] == "standby" and proc.poll() is None
        assert "learner_active" not in log.read_text()
        other.release()
        wait_until(lambda: _readyz(port).get("role") == "leader", 240, "the learner to lead")
        assert _readyz(port)["model_version"] == "v1"
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(10)
        wait_until(other.try_acquire, 10, "the lock freed by the learner's death", 0.05)
        print(f"\nlearner lock free {time.monotonic() - killed:.2f} s after SIGKILL")
    finally:
        if proc.poll() is None:
            stop_process(proc)
        other.release()
