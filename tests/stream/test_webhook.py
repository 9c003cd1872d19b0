"""The generic webhook's one request: signed JSON, failures without the URL, the settings."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from moodwire.settings import Settings
from stream.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryError,
    post,
    validate_webhook_url,
    verify_signature,
)


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]], list[int]]]:
    got: list[tuple[dict[str, str], bytes]] = []
    status = [204]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook/t0k3n", got, status
    httpd.shutdown()


def test_a_signed_post_verifies_at_the_receiver(server) -> None:  # noqa: ANN001
    url, got, _ = server
    body = b'{"id": "al-1", "severity": "critical"}'
    post(url, body, secret=b"k3y", timeout_s=5)
    ((headers, received),) = got
    assert received == body and headers["Content-Type"] == "application/json"
    ts = headers[TIMESTAMP_HEADER]
    assert abs(int(ts) - time.time()) < 60
    mac = hmac.new(b"k3y", ts.encode() + b"." + received, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], f"sha256={mac}")
    assert verify_signature(received, b"k3y", headers)
    # The timestamp is inside the MAC: moving it (a replay made to look fresh) breaks it.
    moved = {**headers, TIMESTAMP_HEADER: str(int(ts) + 1)}
    assert not verify_signature(received, b"k3y", moved)


def test_without_a_secret_the_post_is_unsigned(server) -> None:  # noqa: ANN001
    url, got, _ = server
    post(url, b"{}", secret=None, timeout_s=5)
    ((headers, _),) = got
    assert SIGNATURE_HEADER not in headers and TIMESTAMP_HEADER not in headers


def test_failures_say_why_without_the_url(server) -> None:  # noqa: ANN001
    url, _, status = server
    status[0] = 503
    with pytest.raises(DeliveryError, match="HTTP 503") as exc:
        post(url, b"{}", secret=None, timeout_s=5)
    assert "t0k3n" not in str(exc.value)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(DeliveryError, match="ConnectionRefusedError") as exc:
        post(f"http://127.0.0.1:{port}/hook/t0k3n", b"{}", secret=None, timeout_s=5)
    assert "t0k3n" not in str(exc.value) and str(port) not in str(exc.value)


def test_only_http_urls_are_webhooks() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        validate_webhook_url("ftp://example.org/x")


def test_the_webhook_url_setting_is_a_destination_for_every_severity() -> None:
    s = Settings(
        webhook_url="https://hooks.example.com/t0k3n",
        webhook_retries=5,
        webhook_secret="whsec",
        notify='[{"url": "json://127.0.0.1:9/x", "min_severity": "critical", "name": "ops"}]',
    )
    ops, hook = s.destinations()
    assert (ops.key, ops.kind, ops.min_severity) == ("ops", "json", "critical")
    assert (hook.key, hook.kind, hook.min_severity, hook.retries) == (
        "webhook", "webhook", "warning", 5
    )  # fmt: skip
    # (webhook_url itself is a plain string in Settings until the lead's SecretStr change.)
    assert "t0k3n" not in repr(s.destinations()) and "whsec" not in repr(s)
    # A child process gets them back whole.
    again = Settings(**{k.removeprefix("MOODWIRE_").lower(): v for k, v in s.to_env().items()
                        if k in ("MOODWIRE_NOTIFY", "MOODWIRE_WEBHOOK_URL", "MOODWIRE_WEBHOOK_SECRET")})  # fmt: skip
    assert [d.url.get_secret_value() for d in again.destinations()] == [
        "json://127.0.0.1:9/x", "https://hooks.example.com/t0k3n"
    ]  # fmt: skip
    assert again.webhook_secret is not None and again.webhook_secret.get_secret_value() == "whsec"


def test_settings_errors_never_echo_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MOODWIRE_NOTIFY", '[{"url": "json://127.0.0.1:9/t0k3n", "min_severity": "loud"}]'
    )
    with pytest.raises(ValueError, match="destination 0: min_severity: must be one of") as exc:
        Settings()
    assert "t0k3n" not in str(exc.value)
    monkeypatch.setenv("MOODWIRE_NOTIFY", '[{"url": "slack://T1/B1/t0k3n"')
    with pytest.raises(ValueError, match="MOODWIRE_NOTIFY is not valid JSON") as exc:
        Settings()
    assert "t0k3n" not in str(exc.value)
