"""``/healthz``, ``/readyz`` and ``/metrics`` of a worker or learner, on one port.

* ``/healthz`` — 200 while the process's loop is alive (it beat within
  ``stale_s``, waiting out an outage included), else 503: restart me.
* ``/readyz`` — 200 when the process does its job now (its model is loaded,
  it holds partitions, every dependency answers), else 503 with the reasons
  and, per dependency, since when it is down and why: route around me.
* ``/metrics`` — Prometheus text format.

>>> import json, urllib.request
>>> from stream.outage import Health
>>> health = Health("example")
>>> server = HealthServer(health, lambda: (True, {"model": "v1"}), port=0).start()
>>> body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz").read()
>>> json.loads(body)["ready"], json.loads(body)["model"]
(True, 'v1')
>>> server.close()
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from stream.outage import Health

# () -> (ready, details): the process's own view of whether it does its job now.
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """A small HTTP server in a daemon thread; ``port=0`` picks a free one."""

    def __init__(
        self,
        health: Health,
        ready: Readiness,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        stale_s: float = 120.0,
    ) -> None:
        self.health = health
        self.ready = ready
        self.stale_s = stale_s
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    age = time.monotonic() - outer.health.last_beat
                    alive = age < outer.stale_s
                    self._json(
                        200 if alive else 503, {"alive": alive, "last_beat_s": round(age, 1)}
                    )
                elif path == "/readyz":
                    try:
                        ready, details = outer.ready()
                    except Exception as exc:  # noqa: BLE001 - a probe must answer
                        ready, details = False, {"error": f"{type(exc).__name__}: {exc}"}
                    deps = outer.health.snapshot()
                    ready = ready and all(d["up"] for d in deps.values())
                    self._json(
                        200 if ready else 503, {"ready": ready, **details, "dependencies": deps}
                    )
                else:
                    self._json(
                        404, {"error": "unknown path", "paths": ["/healthz", "/readyz", "/metrics"]}
                    )

            def _json(self, code: int, body: dict[str, Any]) -> None:
                self._send(code, json.dumps(body, default=str).encode(), "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # probes every few seconds: not worth a log line each

        return Handler


def serve_health(
    health: Health,
    ready: Readiness,
    *,
    port: int | None,
    host: str = "127.0.0.1",
    stale_s: float = 120.0,
) -> HealthServer | None:
    """A started :class:`HealthServer` on ``port``, or None when no port is configured."""
    if not port:
        return None
    return HealthServer(health, ready, host=host, port=port, stale_s=stale_s).start()
