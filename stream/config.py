"""The stream's own small, frozen configuration: Kafka clients, topic names, the worker.

``moodwire.settings.Settings`` composes these from the environment and the CLI
(``Settings.kafka_config()``, ``Settings.worker()``); nothing in ``stream`` sees the
whole settings object.

>>> KafkaConfig("127.0.0.1:9092").max_fetch_bytes
1048576
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from stream.masking import Masker
from stream.origins import Signer
from stream.validate import Limits


class Topics(BaseModel):
    """Kafka topic names (configuration, not code)."""

    model_config = ConfigDict(frozen=True)

    news: str = "news"
    scored: str = "news.scored"
    dlq: str = "news.dlq"
    labels: str = "news.labels"
    alerts: str = "moodwire.alerts"
    control: str = "moodwire.control"

    def all(self) -> list[str]:
        return [self.news, self.scored, self.dlq, self.labels, self.alerts, self.control]


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class KafkaSecurity(BaseModel):
    """How a client proves who it is and checks who it talks to: the ``kafka`` settings block.

    Set from ``MOODWIRE_KAFKA__<FIELD>`` (``MOODWIRE_KAFKA__SECURITY_PROTOCOL=SASL_SSL``,
    ``MOODWIRE_KAFKA__SASL_PASSWORD``, …). Inconsistent combinations are refused here,
    before any client is built, with the variable to fix:

    >>> KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for KafkaSecurity
      Value error, SASL_SSL needs MOODWIRE_KAFKA__SASL_USERNAME and MOODWIRE_KAFKA__SASL_PASSWORD ...
    >>> KafkaSecurity(sasl_password="hunter2-hunter2")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for KafkaSecurity
      Value error, MOODWIRE_KAFKA__SASL_* is set but MOODWIRE_KAFKA__SECURITY_PROTOCOL is PLAINTEXT ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    ssl_cafile: Path | None = Field(
        None, description="PEM file of the CA(s) that signed the brokers' certificates"
    )
    ssl_certfile: Path | None = Field(
        None, description="this client's PEM certificate (mutual TLS; needs ssl_keyfile)"
    )
    ssl_keyfile: Path | None = Field(None, description="this client's PEM private key")
    ssl_password: SecretStr | None = Field(None, description="password of ssl_keyfile, if any")
    ssl_check_hostname: bool = Field(
        True, description="check that a broker's certificate names the host connected to"
    )
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_oauth_token_file: Path | None = Field(
        None,
        description="OAUTHBEARER: a file holding the current access token, re-read at "
        "every connection (a sidecar refreshes it)",
    )
    client_id: str = Field("moodwire", min_length=1, description="prefix of every client id")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a consumer group with no committed offset starts: earliest "
        "(nothing produced before the first start is missed) or latest",
    )
    replication_factor: int = Field(1, ge=1, description="of the topics Moodwire creates")
    create_topics: bool = Field(
        True,
        description="create missing topics (needs CreateTopics rights); off: a missing "
        "topic is an error naming it",
    )

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        protocol = self.security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol in ("SSL", "SASL_SSL")
        given_sasl = [
            f"MOODWIRE_KAFKA__{n.upper()}"
            for n in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_oauth_token_file")
            if getattr(self, n) is not None
        ]
        if given_sasl and not sasl:
            raise ValueError(
                f"MOODWIRE_KAFKA__SASL_* is set but MOODWIRE_KAFKA__SECURITY_PROTOCOL is "
                f"{protocol} ({', '.join(given_sasl)}); use SASL_SSL or SASL_PLAINTEXT"
            )
        given_tls = [
            f"MOODWIRE_KAFKA__{n.upper()}"
            for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
            if getattr(self, n) is not None
        ]
        if given_tls and not tls:
            raise ValueError(
                f"{', '.join(given_tls)} is set but MOODWIRE_KAFKA__SECURITY_PROTOCOL is "
                f"{protocol}; use SSL or SASL_SSL"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(
                "mutual TLS needs both MOODWIRE_KAFKA__SSL_CERTFILE and MOODWIRE_KAFKA__SSL_KEYFILE"
            )
        if sasl:
            if self.sasl_mechanism is None:
                raise ValueError(f"{protocol} needs MOODWIRE_KAFKA__SASL_MECHANISM")
            if self.sasl_mechanism == "OAUTHBEARER":
                if self.sasl_oauth_token_file is None:
                    raise ValueError("OAUTHBEARER needs MOODWIRE_KAFKA__SASL_OAUTH_TOKEN_FILE")
            elif not self.sasl_username or self.sasl_password is None:
                raise ValueError(
                    f"{protocol} needs MOODWIRE_KAFKA__SASL_USERNAME and "
                    f"MOODWIRE_KAFKA__SASL_PASSWORD for {self.sasl_mechanism}"
                )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_oauth_token_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"MOODWIRE_KAFKA__{name.upper()}: no such file: {path}")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def principal(self) -> str:
        """Who this client is to the broker, for log lines (never a secret)."""
        if self.uses_sasl:
            who = self.sasl_username if self.sasl_mechanism != "OAUTHBEARER" else "(token)"
            return f"{who} via {self.sasl_mechanism}"
        if self.ssl_certfile is not None:
            return f"certificate {Path(self.ssl_certfile).name}"
        return "anonymous"


@dataclass(frozen=True)
class KafkaConfig:
    """How every Kafka client of a process connects and sizes its fetches."""

    bootstrap_servers: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    max_message_bytes: int = 64 * 1024
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    fetch_max_wait_ms: int = 25
    max_poll_records: int = 64

    @property
    def max_fetch_bytes(self) -> int:
        """Oversized items must reach the worker to be dead-lettered, not stall a fetch."""
        return max(1 << 20, self.max_message_bytes * 4)


@dataclass(frozen=True)
class WorkerConfig:
    """What one scoring worker reads, writes and waits for."""

    limits: Limits
    topics: Topics = field(default_factory=Topics)
    consumer_group: str = "moodwire-worker"
    batch_size: int = 64
    batch_timeout_ms: int = 20
    neighbors_k: int = 5
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    signer: Signer | None = None  # signs its drift announcements as origin "worker"
    # Personal data masked where each item is parsed (None: kept as it came).
    masker: Masker | None = None


# Access control's roles, each with the rights of those before it (see stream/access.py).
ROLES = ("viewer", "analyst", "operator", "admin")


@dataclass(frozen=True)
class SignInPolicy:
    """The lock-out of failed sign-ins (``stream.access``), counted in the store.

    ``max_failures`` failures for one user name, or ``max_client_failures`` from
    one client, within ``window_s`` seconds refuse further sign-ins (the right
    password too) until the oldest of them is ``window_s`` old. ``required``:
    the dashboard shows nothing until someone signs in (else viewing needs none).
    """

    max_failures: int = 5
    max_client_failures: int = 20
    window_s: float = 900.0
    required: bool = False


@dataclass(frozen=True)
class OperationsConfig:
    """Where an operator's actions land: the store, the registry, the control and label topics."""

    store_url: str = field(repr=False)  # it may hold the database password
    registry: Path
    kafka: KafkaConfig
    topics: Topics = Topics()
    partitions: int = 4
    sign_in: SignInPolicy = SignInPolicy()
    signer: Signer | None = None  # signs the commands and labels it sends (stream/origins.py)
    # A shared registry's database (None: the directory); it may hold the password.
    registry_url: str | None = field(default=None, repr=False)
