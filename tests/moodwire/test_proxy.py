"""The fault-injection proxy: mechanics on a local echo server, then PostgreSQL and Tansu behind it."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from moodwire.bench.proxy import (
    KAFKA_PRODUCE,
    KafkaRequestFrames,
    ProxiedBroker,
    ProxyError,
    TcpProxy,
)

# -- a local echo server ------------------------------------------------------------


class EchoServer:
    """Echoes every connection; ``upper_on_eof`` answers only once the client half-closes."""

    def __init__(self, upper_on_eof: bool = False) -> None:
        self.upper_on_eof = upper_on_eof
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.resets = 0
        self.reset_seen = threading.Event()
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.upper_on_eof:
                    got = b""
                    while data := conn.recv(65536):
                        got += data
                    conn.sendall(got.upper())
                    return
                while data := conn.recv(65536):
                    conn.sendall(data)
            except ConnectionResetError:
                self.resets += 1
                self.reset_seen.set()
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo.port) as p:
        yield p


def connect(proxy: TcpProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def roundtrip(proxy: TcpProxy, payload: bytes = b"ping") -> bytes:
    with connect(proxy) as c:
        c.sendall(payload)
        return recv_exactly(c, len(payload))


def wait_until(cond, timeout_s: float = 5.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- mechanics -------------------------------------------------------------------------


def test_forwards_both_ways_full_duplex_and_counts_bytes(proxy: TcpProxy) -> None:
    payload = os.urandom(4 << 20)
    with connect(proxy, timeout=20) as c:
        # Write and read at once: more than the socket buffers hold, so a proxy that
        # does not read and write both directions together deadlocks here.
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(recv_exactly(c, len(payload))))
        reader.start()
        c.sendall(payload)
        reader.join(20)
    assert bytes(received) == payload
    wait_until(lambda: proxy.bytes_to_clients == len(payload), what="byte counters")
    assert proxy.bytes_to_target == len(payload)
    assert proxy.connections_accepted == 1


def test_many_concurrent_connections(proxy: TcpProxy) -> None:
    results: list[bool] = []

    def client(i: int) -> None:
        payload = f"client-{i}-".encode() * 2000
        results.append(roundtrip(proxy, payload) == payload)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [True] * 60
    assert proxy.connections_accepted == 60
    wait_until(lambda: proxy.stats()["live_connections"] == 0, what="links to close")


def test_half_close_travels_after_the_data() -> None:
    server = EchoServer(upper_on_eof=True)
    try:
        with TcpProxy("127.0.0.1", server.port) as proxy, connect(proxy) as c:
            c.sendall(b"quiet please")
            c.shutdown(socket.SHUT_WR)  # the server answers only after our EOF
            assert recv_exactly(c, 12) == b"QUIET PLEASE"
            assert c.recv(10) == b""  # and then its own EOF comes through
    finally:
        server.close()


def test_cut_resets_both_sides_and_keeps_listening(proxy: TcpProxy, echo: EchoServer) -> None:
    c = connect(proxy)
    c.sendall(b"hello")
    assert recv_exactly(c, 5) == b"hello"
    assert proxy.cut() == 1
    with pytest.raises(ConnectionResetError):
        c.sendall(b"x")
        c.recv(10)
    c.close()
    assert echo.reset_seen.wait(5), "the server side did not see a reset"
    assert proxy.cut() == 0  # idempotent
    assert roundtrip(proxy) == b"ping"


def test_go_down_refuses_and_come_back_listens_on_the_same_port(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    port = proxy.port
    live = connect(proxy)
    live.sendall(b"a")
    assert recv_exactly(live, 1) == b"a"

    proxy.go_down()
    proxy.go_down()  # idempotent
    assert proxy.is_down
    with pytest.raises(ConnectionResetError):
        live.sendall(b"b")
        live.recv(10)
    live.close()
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert time.monotonic() - t0 < 1.0

    proxy.come_back()
    proxy.come_back()  # idempotent
    assert proxy.port == port
    assert roundtrip(proxy, b"again") == b"again"


def test_blackhole_holds_every_byte_until_healed(proxy: TcpProxy) -> None:
    before = connect(proxy, timeout=0.5)
    proxy.blackhole(True)
    proxy.blackhole(True)
    before.sendall(b"lost?")
    with pytest.raises(TimeoutError):
        before.recv(10)
    during = connect(proxy, timeout=0.5)  # accepted: a hung path, not a refusing one
    during.sendall(b"hello?")
    with pytest.raises(TimeoutError):
        during.recv(10)
    assert proxy.bytes_to_target == 0

    proxy.blackhole(False)
    before.settimeout(5)
    during.settimeout(5)
    assert recv_exactly(before, 5) == b"lost?"
    assert recv_exactly(during, 6) == b"hello?"
    before.close()
    during.close()


def test_a_refusing_target_resets_the_client() -> None:
    with TcpProxy("127.0.0.1", _closed_port()) as proxy:
        # The reset may even beat the client's own connect() back (loopback is quick).
        with pytest.raises((ConnectionResetError, EOFError)), connect(proxy) as c:
            c.sendall(b"anyone?")
            recv_exactly(c, 1)
        wait_until(lambda: proxy.target_unreachable == 1, what="the unreachable count")


def test_close_stops_listening_and_controls_still_answer(echo: EchoServer) -> None:
    proxy = TcpProxy("127.0.0.1", echo.port).start()
    port = proxy.port
    assert roundtrip(proxy) == b"ping"
    proxy.close()
    proxy.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert proxy.cut() == 0
    assert proxy.stats()["connections_accepted"] == 1


def test_refuse_kafka_produce_needs_a_kafka_proxy(proxy: TcpProxy) -> None:
    with pytest.raises(ProxyError, match="kafka=True"):
        proxy.refuse_kafka_produce(True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Kafka request framing (no broker) ------------------------------------------------


def _frame(api_key: int, body: bytes = b"", correlation_id: int = 7) -> bytes:
    header = struct.pack(">hhi", api_key, 9, correlation_id) + body
    return struct.pack(">i", len(header)) + header


def test_frames_are_counted_across_any_split() -> None:
    stream = _frame(18) + _frame(3, b"m" * 300) + _frame(1, b"f" * 5) + _frame(0, b"p" * 70)
    for step in (1, 3, 7, 8, 13, len(stream)):
        counts: Counter[int] = Counter()
        frames = KafkaRequestFrames(counts)
        out = b""
        for i in range(0, len(stream), step):
            passed, refused = frames.feed(stream[i : i + step], refuse_produce=False)
            assert not refused
            out += passed
        assert out == stream, f"split every {step} bytes"
        assert counts == Counter({18: 1, 3: 1, 1: 1, KAFKA_PRODUCE: 1})


def test_a_produce_frame_is_stopped_at_its_first_byte() -> None:
    before = _frame(3, b"metadata") + _frame(1, b"fetch")
    stream = before + _frame(0, b"records" * 10) + _frame(12)
    for step in (1, 5, len(stream)):
        frames = KafkaRequestFrames(Counter())
        out, refused = b"", False
        for i in range(0, len(stream), step):
            passed, refused = frames.feed(stream[i : i + step], refuse_produce=True)
            out += passed
            if refused:
                break
        assert refused
        assert out == before, f"split every {step} bytes"


def test_a_stream_that_is_not_kafka_passes_through_untouched() -> None:
    counts: Counter[int] = Counter()
    frames = KafkaRequestFrames(counts)
    junk = b"\xff\xff\xff\xff" + b"GET / HTTP/1.1\r\n" * 4
    assert frames.feed(junk, refuse_produce=True) == (junk, False)
    assert frames.feed(_frame(0), refuse_produce=True) == (_frame(0), False)
    assert frames.unparsed
    assert not counts


# -- PostgreSQL behind the proxy ------------------------------------------------------

PG_HOST, PG_PORT = "127.0.0.1", 5432


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=2).close()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} (CI must start it)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}")
    with TcpProxy(PG_HOST, PG_PORT) as p:
        yield p


@pytest.mark.integration
def test_postgresql_through_the_proxy_goes_down_and_comes_back(pg_proxy: TcpProxy) -> None:
    import sqlalchemy as sa

    url = f"postgresql+psycopg://postgres@127.0.0.1:{pg_proxy.port}/test"
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 41 + 1")).scalar() == 42
        assert pg_proxy.connections_accepted == 1

        pg_proxy.go_down()
        t0 = time.monotonic()
        with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert time.monotonic() - t0 < 2.0, "a refused connection must fail fast"

        pg_proxy.come_back()
        # The pooled connection died with the cut; pre-ping replaces it.
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 'back'")).scalar() == "back"
    finally:
        engine.dispose()


@pytest.mark.integration
def test_postgresql_cut_mid_session_is_an_error_the_pool_recovers_from(
    pg_proxy: TcpProxy,
) -> None:
    import sqlalchemy as sa

    url = f"postgresql+psycopg://postgres@127.0.0.1:{pg_proxy.port}/test"
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            assert pg_proxy.cut() == 1
            with pytest.raises(sa.exc.OperationalError):
                conn.execute(sa.text("SELECT 2"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 3")).scalar() == 3
    finally:
        engine.dispose()


# -- Kafka behind the proxy -------------------------------------------------------------


@pytest.fixture(scope="module")
def proxied_broker() -> Iterator[ProxiedBroker]:
    with ProxiedBroker() as broker:
        yield broker


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _producer(bootstrap: str, **overrides: object):  # type: ignore[no-untyped-def]
    from kafka import KafkaProducer

    config: dict[str, object] = {"acks": "all", "linger_ms": 5}
    config.update(overrides)
    return KafkaProducer(bootstrap_servers=bootstrap, **config)


def _read(consumer, n: int, timeout_s: float = 20.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            values.extend(r.value for r in records)
    return values


@pytest.mark.integration
def test_every_kafka_connection_goes_through_the_proxy(proxied_broker: ProxiedBroker) -> None:
    from kafka import KafkaConsumer, TopicPartition

    from stream.clients import ensure_topics

    topic = _topic("via-proxy")
    boot = proxied_broker.bootstrap_servers
    assert boot == proxied_broker.proxy.address
    ensure_topics(boot, [topic], 1)
    produced_before = proxied_broker.proxy.kafka_requests[KAFKA_PRODUCE]
    producer = _producer(boot)
    try:
        for i in range(5):
            producer.send(topic, f"m{i}".encode()).get(timeout=10)
    finally:
        producer.close(timeout=5)
    # Produce goes to the partition leader's advertised address: seen here, it is the proxy.
    assert proxied_broker.proxy.kafka_requests[KAFKA_PRODUCE] - produced_before >= 5

    consumer = KafkaConsumer(bootstrap_servers=boot, consumer_timeout_ms=1000)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        assert _read(consumer, 5) == [f"m{i}".encode() for i in range(5)]
    finally:
        consumer.close()
    assert proxied_broker.proxy.kafka_requests[1] > 0  # Fetch


@pytest.mark.integration
def test_refused_produce_fails_the_send_while_a_group_consumer_goes_on(
    proxied_broker: ProxiedBroker,
) -> None:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from stream.clients import ensure_topics

    topic = _topic("refuse")
    boot = proxied_broker.bootstrap_servers
    proxy = proxied_broker.proxy
    ensure_topics(boot, [topic], 1)
    first = _producer(boot)
    first.send(topic, b"before").get(timeout=10)
    first.close(timeout=5)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=boot,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # As the worker's settings do: with kafka-python's default 45 s session, a
        # Tansu group takes far longer than ~3 s to form.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    # A producer whose delivery timeout is short: the refused send must fail, not hang.
    producer = _producer(boot, request_timeout_ms=1000, delivery_timeout_ms=3000)
    try:
        producer.send(topic, b"warm-up").get(timeout=10)  # connected and metadata known
        refused_before = proxy.produce_refused
        proxy.refuse_kafka_produce(True)
        t0 = time.monotonic()
        with pytest.raises(KafkaError):
            producer.send(topic, b"refused").get(timeout=30)
        elapsed = time.monotonic() - t0
        assert 2.5 < elapsed < 10, f"delivery_timeout_ms=3000 but the send failed after {elapsed}"
        assert proxy.produce_refused > refused_before

        # Still refusing: the group joins, fetches and commits through the same proxy.
        assert _read(consumer, 2) == [b"before", b"warm-up"]
        consumer.commit()
        assert proxy.kafka_requests[11] > 0  # JoinGroup
        assert proxy.kafka_requests[8] > 0  # OffsetCommit

        proxy.refuse_kafka_produce(False)
        # kafka-python 3.0's idempotent producer never sends again after a batch that
        # was sent and then expired (see moodwire/bench/proxy.py), so a fresh one sends.
        fresh = _producer(boot)
        try:
            fresh.send(topic, b"after").get(timeout=10)
        finally:
            fresh.close(timeout=5)
        assert _read(consumer, 1) == [b"after"]  # never b"refused": it was not forwarded
    finally:
        proxy.refuse_kafka_produce(False)
        with contextlib.suppress(Exception):
            producer.close(timeout=0)
        consumer.close()


@pytest.mark.integration
def test_a_killed_broker_restarts_empty_on_the_same_address() -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from stream.clients import ensure_topics

    with ProxiedBroker() as broker:
        boot = broker.bootstrap_servers
        topic = _topic("restart")
        ensure_topics(boot, [topic], 1)
        producer = _producer(boot)
        producer.send(topic, b"lost with the broker").get(timeout=10)
        producer.close(timeout=5)

        broker.kill()
        broker.kill()  # idempotent
        assert not broker.alive()
        unreachable = broker.proxy.target_unreachable
        t0 = time.monotonic()
        with pytest.raises(KafkaError):
            KafkaAdminClient(bootstrap_servers=boot, bootstrap_timeout_ms=2000)
        assert time.monotonic() - t0 < 10
        assert broker.proxy.target_unreachable > unreachable  # the proxy stayed, the broker went

        broker.restart()
        assert broker.alive()
        assert broker.bootstrap_servers == boot
        admin = KafkaAdminClient(bootstrap_servers=boot, request_timeout_ms=5000)
        try:
            assert topic not in admin.list_topics()  # memory storage: it came back empty
        finally:
            admin.close()
        ensure_topics(boot, [topic], 1)
        producer = _producer(boot)
        try:
            assert producer.send(topic, b"new life").get(timeout=10).offset == 0
        finally:
            producer.close(timeout=5)
