"""A fault-injection TCP proxy: put it between a process and a dependency, then break it.

The outage tests and ``moodwire bench faults`` point the process under test at a
:class:`TcpProxy` instead of PostgreSQL or the broker, and then make the dependency
misbehave while traffic flows:

- ``cut()`` resets every live connection (both sides see ECONNRESET) and keeps listening;
- ``go_down()`` cuts and stops listening, so new connections are refused (ECONNREFUSED);
  ``come_back()`` listens again on the same port, so configured addresses work again;
- ``blackhole(True)`` keeps every connection open but moves no byte either way (a hung
  network: clients hit their own timeouts); ``blackhole(False)`` heals it and the
  held bytes flow on, as TCP would deliver them once a path comes back;
- ``refuse_kafka_produce(True)`` (proxies built with ``kafka=True``) reads the client's
  byte stream as Kafka request frames and, instead of forwarding a Produce request,
  resets that connection; Metadata, Fetch, group and offset requests pass untouched.

Every control may be called from any thread while traffic flows, is idempotent, and
has taken effect when it returns. One background thread moves all the bytes
(``selectors``, non-blocking sockets, no added latency worth measuring).

A proxy cannot refuse a connection for a target that refuses: the client's handshake
with the proxy has already succeeded, so it sees a reset right after connecting
(``go_down()`` is the way to get ECONNREFUSED).

What a kafka-python 3.0.12 producer sees (measured through this proxy on Tansu;
defaults unless said):

- ``refuse_kafka_produce(True)``: every attempt's connection is reset, the client
  reconnects and retries after ``retry_backoff_ms`` (about 9 attempts a second). The
  future fails with ``KafkaTimeoutError`` ("Expiring 1 record(s) ...") when
  ``delivery_timeout_ms`` runs out (120 s by default; 5 s with
  ``delivery_timeout_ms=5000, request_timeout_ms=2000``), or with
  ``KafkaConnectionError`` ("[Errno 104] Connection reset by peer") when ``retries``
  run out first (``retries=10``: after about 1 s).
- After either failure an idempotent producer (the default) is finished: after an
  expiry it never sends again (later sends hang, ``flush(timeout)`` raises
  ``KafkaTimeoutError``); after spent retries its next send fails with
  ``OutOfOrderSequenceNumberError`` and every later one with ``KafkaError`` "Unexpected
  error in InitProducerIdResponse". Build a new producer. With
  ``enable_idempotence=False`` the next send succeeds.
- ``cut()``: the in-flight send is retried on a new connection and succeeds (0.1 s).
- ``go_down()`` for 10 s or 30 s: a pending send succeeds about 4 s or 20 s after
  ``come_back()`` (the reconnect backoff grows to ``reconnect_backoff_max_ms``, 30 s),
  if ``delivery_timeout_ms`` has not run out meanwhile; consumers likewise.
- ``blackhole(True)``: the request times out after ``request_timeout_ms`` and is retried;
  healed in time, the send succeeds; otherwise ``KafkaTimeoutError``, then as above.
- ``ProxiedBroker.kill()`` and ``restart()``: a producer that lived through it fails
  with ``UnknownProducerIdError``, then with the InitProducerId error for good (a
  non-idempotent one goes on). A group consumer first fetches from its old position
  (skipping the new broker's first offsets), then the group re-forms with no committed
  offsets and it rereads from ``auto_offset_reset``.

:class:`ProxiedBroker` is an embedded Tansu broker that advertises the proxy's address,
so every Kafka connection, not just the bootstrap one, goes through the proxy; it can
also be SIGKILLed and restarted (empty: memory storage) on the same address.

An echo server behind the proxy, taken down and brought back:

>>> import contextlib, socket, threading
>>> server = socket.create_server(("127.0.0.1", 0))
>>> def echo() -> None:
...     while True:
...         try:
...             conn, _ = server.accept()
...         except OSError:  # the server was closed: the example is over
...             return
...         with conn, contextlib.suppress(ConnectionResetError):  # go_down() resets
...             while data := conn.recv(1024):
...                 conn.sendall(data)
>>> threading.Thread(target=echo, daemon=True).start()
>>> with TcpProxy("127.0.0.1", server.getsockname()[1]) as proxy:
...     with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
...         client.sendall(b"ping")
...         client.recv(1024)
...     proxy.go_down()
...     try:
...         socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
...     except ConnectionRefusedError:
...         print("refused")
...     proxy.come_back()
...     with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
...         client.sendall(b"back")
...         client.recv(1024)
b'ping'
refused
b'back'
>>> server.close()
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import selectors
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.broker import EmbeddedBroker, free_port

log = logging.getLogger(__name__)

KAFKA_PRODUCE = 0
# A Kafka request frame: int32 size, then the header: int16 api_key, int16 api_version, ...
_KAFKA_HEAD = struct.Struct(">ihh")
# Brokers refuse requests over 100 MiB by default; a size beyond this is not Kafka.
_KAFKA_MAX_FRAME = 1 << 30
_RECV_BYTES = 256 * 1024
_CONTROL_TIMEOUT_S = 10.0
_ACCEPT_PAUSE_S = 0.1
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class ProxyError(RuntimeError):
    """The proxy could not do what was asked (listen, rebind its port, obey a control)."""


class KafkaRequestFrames:
    """Splits one client-to-broker byte stream into Kafka request frames as it passes.

    ``feed`` returns the bytes that may be forwarded now and whether a Produce request
    was met while refusing them (then the returned bytes stop just before it). The
    header of a frame is held back until it is complete, so a frame split across reads
    is never half forwarded before its verdict.
    """

    def __init__(self, requests: Counter[int]) -> None:
        self.requests = requests
        self.unparsed = False  # the stream stopped looking like Kafka; pass it through
        self._skip = 0  # bytes of the current frame still to pass
        self._held = b""  # the start of a frame header that is not complete yet

    def feed(self, data: bytes, refuse_produce: bool) -> tuple[bytes, bool]:
        if self.unparsed:
            return data, False
        if self._held:
            data, self._held = self._held + data, b""
        i, n = 0, len(data)
        while True:
            if self._skip:
                step = min(self._skip, n - i)
                i += step
                self._skip -= step
                if self._skip:
                    return data, False
            if i == n:
                return data, False
            if n - i < _KAFKA_HEAD.size:
                self._held = data[i:]
                return data[:i], False
            size, api_key, _version = _KAFKA_HEAD.unpack_from(data, i)
            # The smallest header (api_key, api_version, correlation_id) is 8 bytes.
            if not 8 <= size <= _KAFKA_MAX_FRAME:
                self.unparsed = True
                return data, False
            self.requests[api_key] += 1
            if api_key == KAFKA_PRODUCE and refuse_produce:
                return data[:i], True
            self._skip = 4 + size

    def release(self) -> bytes:
        """The held bytes of an unfinished header (the client closed; pass them on as they are)."""
        held, self._held = self._held, b""
        return held


class _Link:
    """One proxied connection: the accepted client socket and its socket to the target."""

    __slots__ = (
        "client",
        "target",
        "connecting",
        "connect_deadline",
        "up",
        "down",
        "client_eof",
        "target_eof",
        "up_shut",
        "down_shut",
        "frames",
        "masks",
        "closed",
    )

    def __init__(
        self,
        client: socket.socket,
        target: socket.socket,
        deadline: float,
        frames: KafkaRequestFrames | None,
    ) -> None:
        self.client = client
        self.target = target
        self.connecting = True
        self.connect_deadline = deadline
        self.up = bytearray()  # client -> target, not yet sent
        self.down = bytearray()  # target -> client, not yet sent
        self.client_eof = False  # the client shut its sending side
        self.target_eof = False
        self.up_shut = False  # we passed the client's EOF on to the target
        self.down_shut = False
        self.frames = frames
        self.masks: dict[socket.socket, int] = {client: 0, target: 0}
        self.closed = False


class TcpProxy:
    """Forwards every connection accepted on ``listen_host:listen_port`` to the target.

    ``listen_port=0`` takes a free port, fixed for the proxy's life (``come_back()``
    reuses it). ``kafka=True`` parses the client streams as Kafka requests: it fills
    ``kafka_requests`` (a Counter by api_key) and enables ``refuse_kafka_produce``.
    ``connect_timeout_s`` bounds the proxy's own connect to the target; a client whose
    target cannot be reached is reset.

    Counters (read them from any thread; ``stats()`` gives a consistent snapshot):
    ``connections_accepted``, ``target_unreachable``, ``bytes_to_target``,
    ``bytes_to_clients``, ``kafka_requests``, ``produce_refused``.

    >>> proxy = TcpProxy("127.0.0.1", 5432)
    >>> proxy.stats()["live_connections"]
    0
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        kafka: bool = False,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.kafka = kafka
        self.connect_timeout_s = connect_timeout_s

        self.connections_accepted = 0
        self.target_unreachable = 0
        self.bytes_to_target = 0
        self.bytes_to_clients = 0
        self.kafka_requests: Counter[int] = Counter()
        self.produce_refused = 0

        self._port = listen_port
        self._down = False
        self._blackholed = False
        self._refusing_produce = False
        self._target_addr: tuple[int, Any] | None = None
        self._listener: socket.socket | None = None
        self._links: set[_Link] = set()
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lifecycle = threading.Lock()
        # Held while a control is handed to the loop and while the loop stops taking them,
        # so that no control waits on a loop that has gone.
        self._handover = threading.Lock()
        self._loop_running = False
        self._accept_paused = False
        self._accept_resume_at = 0.0

    # -- public surface -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to (known once started when ``listen_port`` was 0)."""
        return self._port

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self._port}"

    @property
    def is_down(self) -> bool:
        return self._down

    @property
    def is_blackholed(self) -> bool:
        return self._blackholed

    @property
    def refusing_produce(self) -> bool:
        return self._refusing_produce

    def start(self) -> TcpProxy:
        with self._lifecycle:
            if self._thread is not None:
                return self
            infos = socket.getaddrinfo(self.target_host, self.target_port, type=socket.SOCK_STREAM)
            if not infos:
                raise ProxyError(f"cannot resolve {self.target_host}:{self.target_port}")
            family, _type, _proto, _name, sockaddr = infos[0]
            self._target_addr = (family, sockaddr)
            self._sel = selectors.DefaultSelector()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._stopping = False
            if not self._down:
                try:
                    self._listen()
                except ProxyError:
                    self._sel.close()
                    self._wake_r.close()
                    self._wake_w.close()
                    self._sel = self._wake_r = self._wake_w = None
                    raise
            self._loop_running = True
            self._thread = threading.Thread(
                target=self._run, name=f"tcp-proxy-{self._port}", daemon=True
            )
            self._thread.start()
        log.info(
            "proxy_started listen=%s target=%s:%s kafka=%s",
            self.address,
            self.target_host,
            self.target_port,
            self.kafka,
        )
        return self

    def close(self) -> None:
        """Reset every connection, stop listening and stop the proxy's thread."""
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._wake()
            thread.join(_CONTROL_TIMEOUT_S)
            self._thread = None
        log.info("proxy_closed listen=%s", self.address)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self) -> int:
        """Reset every live connection now; keep listening. Returns how many were cut."""
        n = self._control(self._cut_all)
        log.info("proxy_cut listen=%s connections=%d", self.address, n)
        return n

    def go_down(self) -> None:
        """Cut every connection and stop listening: new connections are refused."""
        self._down = True
        n = self._control(self._go_down)
        log.info("proxy_down listen=%s connections_cut=%d", self.address, n)

    def come_back(self) -> None:
        """Listen again, on the same port. Raises ProxyError if the port was taken meanwhile."""
        self._down = False
        self._control(self._come_back)
        log.info("proxy_back listen=%s", self.address)

    def blackhole(self, on: bool) -> None:
        """While on, connections are accepted and kept but no byte moves either way."""
        self._blackholed = bool(on)
        self._control(self._refresh_all)
        log.info("proxy_blackhole listen=%s on=%s", self.address, self._blackholed)

    def refuse_kafka_produce(self, on: bool) -> None:
        """While on, a client connection that sends a Produce request is reset instead.

        The Produce request is not forwarded, so nothing of it is written; every other
        request passes. What kafka-python makes of it is in the module docstring.
        """
        if not self.kafka:
            raise ProxyError("refuse_kafka_produce needs a proxy built with kafka=True")
        self._refusing_produce = bool(on)
        log.info("proxy_refuse_produce listen=%s on=%s", self.address, self._refusing_produce)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters and the fault state, JSON-ready."""
        return self._control(self._snapshot)

    # -- the loop thread ------------------------------------------------------------

    def _control(self, fn: Callable[[], Any]) -> Any:
        # Everything that touches sockets runs on the loop thread; the caller waits for it.
        if threading.current_thread() is self._thread:
            return fn()
        with self._handover:
            if not self._loop_running:
                return fn()
            cmd = _Command(fn)
            self._commands.put(cmd)
        self._wake()
        if not cmd.done.wait(_CONTROL_TIMEOUT_S):
            raise ProxyError(f"the proxy on {self.address} did not answer in time")
        if cmd.error is not None:
            raise cmd.error
        return cmd.result

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"\0")

    def _run(self) -> None:
        assert self._sel is not None
        try:
            while not self._stopping:
                for key, mask in self._sel.select(timeout=0.5):
                    if key.data is None:
                        self._drain_wake()
                    elif key.data == "listener":
                        self._accept()
                    else:
                        self._on_event(key.data, key.fileobj, mask)  # type: ignore[arg-type]
                self._run_commands()
                self._expire_connects()
                self._resume_accepting()
        except Exception:
            log.exception("proxy_loop_failed listen=%s", self.address)
            raise
        finally:
            self._cut_all()
            self._close_listener()
            with self._handover:
                self._loop_running = False
                self._sel.close()
                for s in (self._wake_r, self._wake_w):
                    if s is not None:
                        s.close()
                self._sel = self._wake_r = self._wake_w = None
                self._run_commands()  # those that came in while stopping: nothing left to touch

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass

    def _run_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                cmd.result = cmd.fn()
            except BaseException as exc:  # handed to the caller's thread
                cmd.error = exc
            cmd.done.set()

    # listening

    def _listen(self) -> None:
        assert self._sel is not None
        if self._listener is not None:
            return
        try:
            listener = socket.create_server((self.listen_host, self._port), backlog=512)
        except OSError as exc:
            raise ProxyError(f"cannot listen on {self.listen_host}:{self._port}: {exc}") from exc
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, "listener")

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        self._accept_paused = False  # a paused listener is not registered: unregister is a no-op
        if listener is None:
            return
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(listener)
        listener.close()

    def _go_down(self) -> int:
        self._close_listener()
        return self._cut_all()

    def _come_back(self) -> None:
        if self._sel is not None:
            self._listen()

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                client, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: leave the rest in the backlog and try again shortly,
                # rather than spinning on a listener that stays readable.
                log.warning("proxy_accept_failed listen=%s error=%s", self.address, exc)
                self._pause_accepting()
                return
            self.connections_accepted += 1
            try:
                self._open_link(client)
            except OSError as exc:  # no socket for the target (EMFILE...): this client is reset
                log.warning("proxy_link_failed listen=%s error=%s", self.address, exc)
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                client.close()
                self._pause_accepting()
                return

    def _open_link(self, client: socket.socket) -> None:
        assert self._target_addr is not None
        family, sockaddr = self._target_addr
        client.setblocking(False)
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = socket.socket(family, socket.SOCK_STREAM)
        target.setblocking(False)
        with contextlib.suppress(OSError):
            target.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frames = KafkaRequestFrames(self.kafka_requests) if self.kafka else None
        link = _Link(client, target, time.monotonic() + self.connect_timeout_s, frames)
        self._links.add(link)
        err = target.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._unreachable(link, err)
            return
        self._refresh(link)

    def _pause_accepting(self) -> None:
        self._accept_resume_at = time.monotonic() + _ACCEPT_PAUSE_S
        if self._listener is not None and self._sel is not None and not self._accept_paused:
            self._sel.unregister(self._listener)
            self._accept_paused = True

    def _resume_accepting(self) -> None:
        if not self._accept_paused or time.monotonic() < self._accept_resume_at:
            return
        if self._listener is not None and self._sel is not None:
            self._sel.register(self._listener, selectors.EVENT_READ, "listener")
        self._accept_paused = False

    def _unreachable(self, link: _Link, err: int) -> None:
        self.target_unreachable += 1
        log.info(
            "proxy_target_unreachable target=%s:%s error=%s",
            self.target_host,
            self.target_port,
            os.strerror(err) if err else "timeout",
        )
        self._reset(link)

    def _expire_connects(self) -> None:
        now = time.monotonic()
        for link in [lk for lk in self._links if lk.connecting and lk.connect_deadline < now]:
            self._unreachable(link, 0)

    # moving bytes

    def _on_event(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link.closed:
            return
        if link.connecting:
            if sock is not link.target:
                return
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._unreachable(link, err)
                return
            link.connecting = False
            self._refresh(link)
            return
        try:
            if mask & selectors.EVENT_READ:
                self._read(link, sock)
            if not link.closed and mask & selectors.EVENT_WRITE:
                self._flush(link)
        except OSError:
            # ECONNRESET, EPIPE...: one side died abruptly, so the other one must see it too.
            self._reset(link)
            return
        if not link.closed:
            self._refresh(link)

    def _read(self, link: _Link, sock: socket.socket) -> None:
        try:
            data = sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        if sock is link.client:
            if not data:
                link.client_eof = True
                if link.frames is not None:
                    link.up += link.frames.release()
            else:
                if link.frames is not None:
                    data, refused = link.frames.feed(data, self._refusing_produce)
                    if refused:
                        self.produce_refused += 1
                        log.info("proxy_produce_refused listen=%s", self.address)
                        self._reset(link)
                        return
                link.up += data
        elif not data:
            link.target_eof = True
        else:
            link.down += data
        self._flush(link)

    def _flush(self, link: _Link) -> None:
        if link.up:
            n = _send(link.target, link.up)
            self.bytes_to_target += n
        if link.down:
            n = _send(link.client, link.down)
            self.bytes_to_clients += n
        # Half-closes travel only after the bytes before them.
        if link.client_eof and not link.up and not link.up_shut:
            link.target.shutdown(socket.SHUT_WR)
            link.up_shut = True
        if link.target_eof and not link.down and not link.down_shut:
            link.client.shutdown(socket.SHUT_WR)
            link.down_shut = True
        if link.up_shut and link.down_shut:
            self._finish(link)

    def _refresh(self, link: _Link) -> None:
        # Read a side only once what it sent before has been delivered: backpressure.
        c_mask = t_mask = 0
        if link.connecting:
            t_mask = selectors.EVENT_WRITE
        elif not self._blackholed:
            if not link.client_eof and not link.up:
                c_mask |= selectors.EVENT_READ
            if link.down:
                c_mask |= selectors.EVENT_WRITE
            if not link.target_eof and not link.down:
                t_mask |= selectors.EVENT_READ
            if link.up:
                t_mask |= selectors.EVENT_WRITE
        self._interest(link, link.client, c_mask)
        self._interest(link, link.target, t_mask)

    def _refresh_all(self) -> None:
        for link in list(self._links):
            self._refresh(link)
            if not self._blackholed and not link.connecting:
                # Bytes that were held may be waiting in our buffers with no event to come.
                try:
                    self._flush(link)
                except OSError:
                    self._reset(link)
                    continue
                if not link.closed:
                    self._refresh(link)

    def _interest(self, link: _Link, sock: socket.socket, mask: int) -> None:
        assert self._sel is not None
        old = link.masks[sock]
        if mask == old:
            return
        if old == 0:
            self._sel.register(sock, mask, link)
        elif mask == 0:
            self._sel.unregister(sock)
        else:
            self._sel.modify(sock, mask, link)
        link.masks[sock] = mask

    # ending connections

    def _drop(self, link: _Link, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        for sock in (link.client, link.target):
            if link.masks[sock] and self._sel is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()

    def _finish(self, link: _Link) -> None:
        self._drop(link, reset=False)

    def _reset(self, link: _Link) -> None:
        self._drop(link, reset=True)

    def _cut_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._reset(link)
        return len(links)

    def _snapshot(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "target": f"{self.target_host}:{self.target_port}",
            "down": self._down,
            "blackholed": self._blackholed,
            "refusing_produce": self._refusing_produce,
            "live_connections": len(self._links),
            "connections_accepted": self.connections_accepted,
            "target_unreachable": self.target_unreachable,
            "bytes_to_target": self.bytes_to_target,
            "bytes_to_clients": self.bytes_to_clients,
            "kafka_requests": {str(k): v for k, v in sorted(self.kafka_requests.items())},
            "produce_refused": self.produce_refused,
        }


class _Command:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def _send(sock: socket.socket, buf: bytearray) -> int:
    try:
        n = sock.send(buf)
    except (BlockingIOError, InterruptedError):
        return 0
    del buf[:n]
    return n


class ProxiedBroker:
    """An embedded Tansu broker that Kafka clients reach only through a :class:`TcpProxy`.

    Tansu listens on a free loopback port but advertises the proxy's, so metadata sends
    every client connection (bootstrap, partition leaders, group coordinator) through
    ``proxy``. ``kill()`` SIGKILLs the broker; ``restart()`` starts a new one on the
    same port, EMPTY (memory storage: no topics, no committed offsets), reachable at
    the same ``bootstrap_servers``.

    >>> broker = ProxiedBroker()
    >>> broker.proxy.kafka
    True
    """

    def __init__(self, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.log_path = log_path
        self.broker_port = free_port(host)
        self.proxy = TcpProxy(host, self.broker_port, listen_host=host, kafka=True)
        self._broker: EmbeddedBroker | None = None

    @property
    def bootstrap_servers(self) -> str:
        return self.proxy.address

    def start(self, timeout_s: float = 15.0) -> ProxiedBroker:
        self.proxy.start()
        try:
            self._start_broker(timeout_s)
        except BaseException:
            self.proxy.close()
            raise
        return self

    def alive(self) -> bool:
        return self._broker is not None and self._broker.alive()

    def kill(self) -> None:
        """SIGKILL the broker process, as a crash would (idempotent)."""
        broker = self._broker
        # EmbeddedBroker has no kill of its own; its process handle is the only way in.
        proc = broker._proc if broker is not None else None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.info("broker_killed real_port=%d proxy=%s", self.broker_port, self.bootstrap_servers)

    def restart(self, timeout_s: float = 15.0) -> None:
        """Kill the broker if it runs, then start an empty one on the same port."""
        self.kill()
        self._start_broker(timeout_s)

    def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.stop()
        self.proxy.close()

    def __enter__(self) -> ProxiedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_broker(self, timeout_s: float) -> None:
        self._broker = EmbeddedBroker(
            port=self.broker_port,
            host=self.host,
            log_path=self.log_path,
            advertised_host=self.proxy.listen_host,
            advertised_port=self.proxy.port,
        ).start(timeout_s)
