"""Every Kafka client of Moodwire, built here from one :class:`~stream.config.KafkaConfig`.

Producers, consumers, tail readers and the admin client of the worker, the
learner, the dashboard, ``produce``, the demo and the benches all come from
these functions, so a secured cluster (TLS, mutual TLS, SASL PLAIN/SCRAM,
OAUTHBEARER) is one settings block (``MOODWIRE_KAFKA__*``), not a change in
five places.

Before the first client of a process connects, :func:`check_connection` opens
one connection itself and says in one line what is wrong when the TLS
handshake or the authentication fails (kafka-python would otherwise retry
quietly until a bootstrap timeout): :class:`~stream.errors.KafkaSecurityError`,
which is a configuration error, not an outage to wait out. A broker that does
not answer at all is an outage (``ConnectionError``), waited out by the caller.

>>> from stream.config import KafkaSecurity
>>> kw = connection_kwargs(KafkaConfig("b:9093", security=KafkaSecurity()))
>>> kw["security_protocol"], "sasl_plain_password" in kw
('PLAINTEXT', False)
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.net.sasl.oauth import AbstractTokenProvider

from stream.config import KafkaConfig, KafkaSecurity
from stream.errors import BrokerError, KafkaSecurityError

log = structlog.get_logger(__name__)


class _NoConfigDump(logging.Filter):
    """kafka-python's admin client logs its whole configuration, SASL password included, at
    DEBUG: that record is dropped wherever the logs go."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "with configuration" not in str(record.msg)


logging.getLogger("kafka.admin.client").addFilter(_NoConfigDump())


class _LogRebalance(ConsumerRebalanceListener):
    # Offsets are committed after every batch, before the next poll, so a
    # rebalance never loses processed work; it only needs to be visible.
    def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
        log.info(
            "partitions_revoked", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked)
        )

    def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
        log.info(
            "partitions_assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )


class TokenFile(AbstractTokenProvider):
    """OAUTHBEARER: the access token in a file, re-read at every connection.

    Whatever refreshes the token (a sidecar, a cron job) writes the file; the
    broker sees a fresh token at the next reconnect, and no token sits in the
    environment.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def token(self) -> str:
        token = self.path.read_text(encoding="utf-8").strip()
        if not token:
            raise KafkaSecurityError(f"MOODWIRE_KAFKA__SASL_OAUTH_TOKEN_FILE {self.path} is empty")
        return token


def connection_kwargs(kafka: KafkaConfig) -> dict[str, Any]:
    """kafka-python's connection arguments (servers, TLS, SASL) for any client."""
    sec = kafka.security
    kw: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": sec.security_protocol,
    }
    if sec.uses_tls:
        kw["ssl_check_hostname"] = sec.ssl_check_hostname
        if sec.ssl_cafile is not None:
            kw["ssl_cafile"] = str(sec.ssl_cafile)
        if sec.ssl_certfile is not None:
            kw["ssl_certfile"] = str(sec.ssl_certfile)
            kw["ssl_keyfile"] = str(sec.ssl_keyfile)
        if sec.ssl_password is not None:
            kw["ssl_password"] = sec.ssl_password.get_secret_value()
    if sec.uses_sasl:
        kw["sasl_mechanism"] = sec.sasl_mechanism
        if sec.sasl_mechanism == "OAUTHBEARER":
            assert sec.sasl_oauth_token_file is not None  # checked by KafkaSecurity
            kw["sasl_oauth_token_provider"] = TokenFile(sec.sasl_oauth_token_file)
        else:
            assert sec.sasl_password is not None  # checked by KafkaSecurity
            kw["sasl_plain_username"] = sec.sasl_username
            kw["sasl_plain_password"] = sec.sasl_password.get_secret_value()
    return kw


def _client_id(kafka: KafkaConfig, role: str) -> str:
    # "moodwire-worker" by default; "acme-risk-worker" with MOODWIRE_KAFKA__CLIENT_ID=acme-risk,
    # so a cluster's quotas and logs can tell deployments apart.
    prefix = kafka.security.client_id
    return role if prefix == "moodwire" else role.replace("moodwire", prefix, 1)


def make_producer(kafka: KafkaConfig, *, client_id: str = "moodwire") -> KafkaProducer:
    # acks=all + idempotence: a retried send is not written twice by the broker. A send
    # that the broker has not acknowledged within delivery_timeout_ms fails (and is
    # retried by stream.publish, which checks the topic first); send() itself waits at
    # most max_block_ms for the topic's metadata, so an outage shows within seconds.
    check_connection(kafka)
    return KafkaProducer(
        **connection_kwargs(kafka),
        client_id=_client_id(kafka, client_id),
        acks="all",
        linger_ms=5,
        max_request_size=kafka.max_fetch_bytes,
        request_timeout_ms=10_000,
        delivery_timeout_ms=30_000,
        max_block_ms=10_000,
        # Back within seconds of a broker's return (the default backoff grows to 30 s).
        reconnect_backoff_max_ms=5_000,
    )


def make_reader(kafka: KafkaConfig, *, client_id: str = "moodwire-reader") -> KafkaConsumer:
    """A group-less consumer that never commits: for reading a topic's tail."""
    check_connection(kafka)
    return KafkaConsumer(
        **connection_kwargs(kafka),
        client_id=_client_id(kafka, client_id),
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=15_000,
        max_partition_fetch_bytes=kafka.max_fetch_bytes,
    )


def make_consumer(
    kafka: KafkaConfig, *topics: str, group_id: str | None, client_id: str = "moodwire"
) -> KafkaConsumer:
    check_connection(kafka)
    consumer = KafkaConsumer(
        **connection_kwargs(kafka),
        client_id=_client_id(kafka, client_id),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=kafka.security.auto_offset_reset,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_records=kafka.max_poll_records,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        reconnect_backoff_max_ms=5_000,
        max_partition_fetch_bytes=kafka.max_fetch_bytes,
    )
    if topics:
        consumer.subscribe(list(topics), listener=_LogRebalance() if group_id else None)
    return consumer


def make_admin(kafka: KafkaConfig, *, client_id: str = "moodwire-admin") -> KafkaAdminClient:
    check_connection(kafka)
    return KafkaAdminClient(
        **connection_kwargs(kafka), client_id=_client_id(kafka, client_id), request_timeout_ms=5000
    )


def as_kafka(kafka: KafkaConfig | str) -> KafkaConfig:
    """A bare ``host:port`` (tests, the embedded broker) is a plaintext cluster."""
    return kafka if isinstance(kafka, KafkaConfig) else KafkaConfig(kafka)


def ensure_topics(
    kafka: KafkaConfig | str, topics: list[str], partitions: int, timeout_s: float = 15.0
) -> None:
    """Make sure the topics exist; never rely on the broker's auto-creation.

    With ``create_topics`` on (the default) the missing ones are created with
    the configured replication factor; off, Moodwire needs no CreateTopics
    right and a missing topic is a :class:`~stream.errors.BrokerError` naming it.
    """
    kafka = as_kafka(kafka)
    sec = kafka.security
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = make_admin(kafka)
            break
        except KafkaSecurityError:
            raise
        except (KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}"
                ) from exc
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing and not sec.create_topics:
            raise BrokerError(
                f"topic(s) {', '.join(missing)} missing on {kafka.bootstrap_servers} and "
                "MOODWIRE_KAFKA__CREATE_TOPICS is off: ask the cluster's admins to create "
                f"them (partitions {partitions}, replication {sec.replication_factor}), "
                "or turn it on where Moodwire may create topics"
            )
        if missing:
            # A concurrent creator may win the race; that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(
                            t,
                            num_partitions=partitions,
                            replication_factor=sec.replication_factor,
                        )
                        for t in missing
                    ]
                )
            log.info(
                "topics_created",
                topics=missing,
                partitions=partitions,
                replication_factor=sec.replication_factor,
            )
    finally:
        admin.close()


# -- the first connection, checked in one line ------------------------------------------

_checked: set[tuple[str, KafkaSecurity]] = set()
_checked_lock = threading.Lock()


def check_connection(kafka: KafkaConfig, *, timeout_s: float = 10.0) -> None:
    """Prove, once per process and configuration, that TLS and SASL succeed.

    Plaintext without SASL needs no check. Otherwise one bootstrap server is
    connected to directly: the TLS handshake (and, for mutual TLS, the broker's
    verdict on our certificate) with Python's ``ssl``, and the SASL exchange
    through kafka-python. A refusal is logged once (``kafka_tls_failed`` /
    ``kafka_authentication_failed``) and raised as
    :class:`~stream.errors.KafkaSecurityError`; a broker that does not answer
    raises ``ConnectionError`` (an outage: the caller waits it out).
    """
    sec = kafka.security
    if not (sec.uses_tls or sec.uses_sasl):
        return
    key = (kafka.bootstrap_servers, sec)
    with _checked_lock:
        if key in _checked:
            return
    host, port = _first_server(kafka.bootstrap_servers)
    if sec.uses_tls:
        _check_tls(sec, host, port, timeout_s)
    if sec.uses_sasl:
        _check_sasl(kafka, host, port, timeout_s)
    with _checked_lock:
        _checked.add(key)
    log.info(
        "kafka_connection_checked",
        bootstrap=kafka.bootstrap_servers,
        security_protocol=sec.security_protocol,
        principal=sec.principal(),
    )


def _first_server(servers: str) -> tuple[str, int]:
    first = servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise KafkaSecurityError(f"bootstrap server {first!r} is not host:port")
    return host.strip("[]"), int(port)


def tls_context(sec: KafkaSecurity) -> ssl.SSLContext:
    """The context kafka-python builds from the same settings (CA, client pair, hostname)."""
    try:
        ctx = ssl.create_default_context(cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None)
        ctx.check_hostname = sec.ssl_check_hostname
        if sec.ssl_certfile is not None:
            ctx.load_cert_chain(
                str(sec.ssl_certfile),
                str(sec.ssl_keyfile),
                sec.ssl_password.get_secret_value() if sec.ssl_password else None,
            )
    except (ssl.SSLError, OSError) as exc:
        message = f"cannot load the TLS files (MOODWIRE_KAFKA__SSL_*): {_ssl_reason(exc)}"
        log.error("kafka_tls_failed", reason=message)
        raise KafkaSecurityError(message) from exc
    return ctx


def _api_versions_request() -> bytes:
    # ApiVersions v0 (api key 18), correlation id 1, client id "moodwire-check": every
    # broker answers it before authentication.
    client = b"moodwire-check"
    body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
    return struct.pack(">i", len(body)) + body


def _check_tls(sec: KafkaSecurity, host: str, port: int, timeout_s: float) -> None:
    ctx = tls_context(sec)
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise ConnectionError(f"Kafka at {host}:{port} does not answer: {exc}") from exc
    where = f"{host}:{port}"
    try:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            # With TLS 1.3 the broker judges our certificate after the handshake: its
            # verdict arrives as the answer to the first request.
            tls.sendall(_api_versions_request())
            head = tls.recv(4)
            if len(head) < 4:
                raise ssl.SSLError("the broker closed the connection after the handshake")
    except ssl.SSLCertVerificationError as exc:
        _tls_refused(where, f"{exc.verify_message} — is MOODWIRE_KAFKA__SSL_CAFILE the CA "
                     "that signed the broker's certificate?", exc)  # fmt: skip
    except ssl.SSLError as exc:
        _tls_refused(where, f"{_ssl_reason(exc)}{_client_cert_hint(sec, exc)}", exc)
    except (ConnectionResetError, BrokenPipeError) as exc:
        # Under TLS 1.3 a broker that wants a client certificate may just drop us.
        reason = f"the broker reset the connection during TLS ({exc}){_client_cert_hint(sec, exc)}"
        _tls_refused(where, reason, exc)
    except TimeoutError as exc:
        _tls_refused(where, "no TLS answer in time — is this a TLS listener?", exc)


def _client_cert_hint(sec: KafkaSecurity, exc: BaseException | None = None) -> str:
    if sec.ssl_certfile is None:
        return " — the broker may require a client certificate (MOODWIRE_KAFKA__SSL_CERTFILE)"
    text = str(exc or "").lower()
    if "eof" in text or "reset" in text or "closed" in text:
        # A broker that refuses our certificate may drop the connection without an alert.
        return (
            " — the broker may not trust this client certificate "
            "(MOODWIRE_KAFKA__SSL_CERTFILE: is it signed by a CA the broker knows?)"
        )
    return ""


def _tls_refused(where: str, reason: str, exc: BaseException) -> None:
    message = f"TLS with Kafka at {where} failed: {reason}"
    log.error("kafka_tls_failed", broker=where, reason=reason)
    raise KafkaSecurityError(message) from exc


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(exc)
    return f"{reason.lower().replace('_', ' ')} ({text})" if reason else text


def _check_sasl(kafka: KafkaConfig, host: str, port: int, timeout_s: float) -> None:
    from kafka.errors import SaslAuthenticationFailedError, UnsupportedSaslMechanismError

    sec = kafka.security
    where = f"{host}:{port}"
    kw = connection_kwargs(kafka)
    kw["bootstrap_servers"] = where
    # kafka-python logs every refused attempt at ERROR and retries until its timeout;
    # here the refusal is ours to report, once.
    quiet = _QuietKafkaLogs()
    try:
        with quiet:
            admin = KafkaAdminClient(
                **kw,
                client_id="moodwire-check",
                request_timeout_ms=int(timeout_s * 1000),
                bootstrap_timeout_ms=int(timeout_s * 1000),
                reconnect_backoff_max_ms=1000,
            )
        admin.close()
    except (SaslAuthenticationFailedError, UnsupportedSaslMechanismError) as exc:
        _sasl_refused(where, sec, str(exc), exc)
    except KafkaError as exc:
        refusal = quiet.sasl_refusal()
        if refusal is not None:
            _sasl_refused(where, sec, refusal, exc)
        raise ConnectionError(f"Kafka at {where} does not answer: {exc}") from exc


def _sasl_refused(where: str, sec: KafkaSecurity, reason: str, exc: BaseException) -> None:
    reason = reason.split("\n")[0][:300]
    if sec.sasl_password is not None:
        reason = reason.replace(sec.sasl_password.get_secret_value(), "**********")
    log.error("kafka_authentication_failed", broker=where, principal=sec.principal(), reason=reason)
    raise KafkaSecurityError(
        f"Kafka at {where} refused {sec.principal()}: {reason} — check "
        "MOODWIRE_KAFKA__SASL_USERNAME / MOODWIRE_KAFKA__SASL_PASSWORD / SASL_MECHANISM"
    ) from exc


class _QuietKafkaLogs:
    """Hold kafka-python's own log records during the check; remember an auth refusal."""

    def __init__(self) -> None:
        import logging

        self._logging = logging
        self.records: list[logging.LogRecord] = []

    def __enter__(self) -> _QuietKafkaLogs:
        logging = self._logging
        outer = self

        class _Hold(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.records.append(record)

        self._logger = logging.getLogger("kafka")
        self._handler = _Hold()
        self._saved = (self._logger.propagate, self._logger.level)
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate, level = self._saved
        self._logger.setLevel(level)

    def sasl_refusal(self) -> str | None:
        """What the broker said when it refused us, if it did (never a configuration dump)."""
        for record in self.records:
            text = record.getMessage()
            if "SaslAuthenticateResponse" in text:
                # SCRAM's server-final message is "e=<reason>" on a refusal (RFC 5802).
                refused = re.search(r"auth_bytes=b'e=([^']*)'", text)
                if refused:
                    return f"SCRAM refused: {refused.group(1)}"
                code = re.search(r"error_code=(\d+), error_message='([^']*)'", text)
                if code and code.group(1) != "0":
                    return f"SASL error {code.group(1)}: {code.group(2)}"
        for record in self.records:
            text = record.getMessage()
            if record.levelno >= self._logging.WARNING and (
                "Sasl" in text or "Authentication" in text
            ):
                return text
        return None
