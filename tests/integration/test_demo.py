"""`moodwire demo` as a newcomer runs it: everything starts, items flow, everything stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_until

from moodwire.store import Store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOODWIRE_")}
    return env | {
        "MOODWIRE_DATA_DIR": str(tmp_path),
        "MOODWIRE_DEVICE": "cpu",
        "MOODWIRE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }


def _children_gone(pid: int) -> bool:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return out.stdout.strip() == ""


def test_demo_learns_the_scripted_drift_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """Bootstrap, stream, detect the drift, retrain, promote, hot-swap; then Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "moodwire", "demo", "--headless", "--items", "3200", "--rate", "40"],
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        store_url = f"sqlite:///{(tmp_path / 'moodwire.db').resolve()}"
        wait_until(lambda: (tmp_path / "moodwire.db").exists(), 400, "the store")
        wait_until(lambda: Store(store_url).count_items() >= 50, 300, "items flowing", 1.0)
        wait_until(
            lambda: len(Store(store_url).stats()["by_model_version"]) >= 2,
            480,  # the drift comes at 60 % of the feed; then labels, a retrain (45 s budget)
            "items scored by a second, learned version",
            2.0,
        )
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        lines = out.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "\n".join(lines[-20:])
    assert any(line.startswith("broker") for line in lines)
    assert any(line.startswith("model       v1") for line in lines)
    final = json.loads(lines[-1])
    assert final["items"] >= 50 and final["by_model_version"].get("v1", 0) >= 50
    assert len(final["by_model_version"]) >= 2
    assert final["drift_events"]["total"] >= 1 and final["promotions"]["promoted"] >= 2
    assert final["labels"]["total"] > 0
    # The scripted surge on INIT raised its alert, printed with its evidence.
    assert final["alerts"]["by_kind"].get("negative_surge", 0) >= 1, final["alerts"]
    assert any(
        line.startswith("alert") and "negative_surge on INIT" in line and "e.g." in line
        for line in lines
    ), [line for line in lines if line.startswith("alert")]
    assert (tmp_path / "registry" / "versions" / "v1" / "card.json").is_file()
    assert _children_gone(proc.pid)
    broker_line = next(line for line in lines if line.startswith("broker"))
    port = int(broker_line.split()[1].rsplit(":", 1)[1])
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_demo_duration_stops_cleanly_with_an_existing_model(
    tmp_path: Path, model_registry: Path
) -> None:
    t0 = time.monotonic()
    registry = tmp_path / "registry"
    shutil.copytree(model_registry, registry)  # the demo's learner may promote into it
    env = _env(tmp_path) | {"MOODWIRE_REGISTRY": str(registry)}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "moodwire",
            "demo",
            "--headless",
            "--duration",
            "25",
            "--items",
            "2000",
            "--rate",
            "30",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert not any("bootstrapping" in line for line in lines)
    counts = [json.loads(line)["items"] for line in lines if line.startswith('{"items"')]
    assert counts[-1] > 0 and counts == sorted(counts), counts
    assert time.monotonic() - t0 < 200


def test_demo_restarts_a_part_that_dies_and_goes_on(tmp_path: Path, model_registry: Path) -> None:
    import threading

    registry = tmp_path / "registry"
    shutil.copytree(model_registry, registry)
    env = _env(tmp_path) | {"MOODWIRE_REGISTRY": str(registry)}
    argv = ["demo", "--headless", "--duration", "90", "--items", "3000", "--rate", "30"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moodwire", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    store_url = f"sqlite:///{(tmp_path / 'moodwire.db').resolve()}"
    try:
        wait_until(lambda: any(x.startswith("worker      pid") for x in lines), 200, "a worker")
        pid = int(next(x for x in lines if x.startswith("worker      pid")).split()[2].rstrip(","))
        wait_until(lambda: Store(store_url).count_items() >= 50, 200, "items flowing", 1.0)
        os.kill(pid, signal.SIGKILL)
        killed_at = Store(store_url).count_items()
        wait_until(lambda: any("worker" in x and "restarted" in x for x in lines), 60, "a restart")
        wait_until(
            lambda: Store(store_url).count_items() > killed_at + 100, 120, "items after the restart"
        )
        proc.wait(timeout=200)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "\n".join(lines[-20:])
    assert any(x.startswith("worker") and "exited with code -9" in x for x in lines), lines
    assert _children_gone(proc.pid)
