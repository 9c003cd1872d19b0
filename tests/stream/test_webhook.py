"""The webhook sink: delivers alert JSON, retries, and never makes its caller wait."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from helpers import wait_until

from stream.webhook import WebhookSink


def _server(status: int) -> tuple[HTTPServer, list[dict]]:
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung endpoint)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


def test_alerts_arrive_as_json() -> None:
    server, got = _server(204)
    sink = WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/hook", retries=0)
    try:
        for i in range(3):
            assert sink.send({"id": f"al-{i}", "kind": "negative_surge", "statistic": 4.2})
        wait_until(lambda: len(got) == 3, 10, "three deliveries")
    finally:
        sink.close()
        server.shutdown()
    assert [a["id"] for a in got] == ["al-0", "al-1", "al-2"] and sink.sent == 3


def test_a_failing_endpoint_is_retried_then_given_up() -> None:
    server, got = _server(500)
    sink = WebhookSink(
        f"http://127.0.0.1:{server.server_address[1]}/hook", retries=2, backoff_s=0.01
    )
    try:
        sink.send({"id": "al-x"})
        wait_until(lambda: sink.failed == 1, 10, "giving up")
    finally:
        sink.close()
        server.shutdown()
    assert len(got) == 3 and sink.sent == 0  # one try and two retries


def test_a_hung_endpoint_never_makes_the_caller_wait(blackhole: str) -> None:
    sink = WebhookSink(blackhole, timeout_s=30, retries=3, queue_size=10)
    accepted = [sink.send({"id": f"al-{i}"}) for i in range(20)]
    # Every send returned while the first delivery is still hanging on the endpoint.
    assert sink.sent == 0 and sink.failed == 0
    # The queue holds 10 and one is in flight: the rest were dropped, not waited for.
    assert 10 <= accepted.count(True) <= 11
    assert sink.dropped == accepted.count(False) >= 9
    sink.close(timeout_s=0.1)  # shutting down does not wait for the endpoint either


def test_a_bad_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://example.org/x")
