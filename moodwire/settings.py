"""One validated, frozen settings object, built at the entry point and passed down.

Every field can be set from the environment with the ``MOODWIRE_`` prefix
(``MOODWIRE_BOOTSTRAP_SERVERS``, ``MOODWIRE_STORE_URL``, ``MOODWIRE_REGISTRY``, …);
CLI flags override the environment. Components never read ``os.environ``.

>>> s = Settings(bootstrap_servers="127.0.0.1:1", data_dir="/tmp/mw")
>>> s.topics.news, s.topics.dlq
('news', 'news.dlq')
>>> str(s.resolved_registry())
'/tmp/mw/registry'
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from learner.config import LearnerConfig
from stream.alerts import AlertConfig
from stream.config import KafkaConfig, OperationsConfig, Topics, WorkerConfig
from stream.validate import Limits

if TYPE_CHECKING:
    from state.shared_registry import AnyRegistry


class Settings(BaseSettings):
    """Everything a Moodwire process needs to know, validated once."""

    model_config = SettingsConfigDict(
        env_prefix="MOODWIRE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    # Where state lives by default (SQLite store, registry, index) when not given explicitly.
    data_dir: Path = Path("moodwire-data")

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: Topics = Topics()
    partitions: int = Field(4, ge=1, description="partitions of topics the broker command creates")
    consumer_group: str = "moodwire-worker"
    # Tansu (and Kafka) join a fresh group much faster with a short session timeout;
    # it also bounds how long a killed worker's partitions stay orphaned.
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    # How long the broker may hold an empty fetch. Apache Kafka answers as soon as data
    # arrives; Tansu waits the whole time (measured: p50 produce-to-poll 26 ms at 100,
    # 5.5 ms at 20), so keep it short for low latency.
    fetch_max_wait_ms: int = Field(25, ge=1, le=5000)

    # Store and registry
    store_url: str | None = None
    registry: Path | None = None
    index_dir: Path | None = None

    # -- Several hosts (issue 15) ----------------------------------------------------------
    # The model registry shared by every host: a SQL URL (postgresql://…, usually the
    # store's) holds the versions and the serving pointer, and `registry` (default
    # DATA_DIR/registry) becomes this host's cache of verified copies. Unset (or
    # file:///DIR): the registry is the local directory, as on one machine.
    registry_url: str | None = None

    # Input limits: anything bigger goes to the dead-letter topic.
    max_message_bytes: int = Field(64 * 1024, ge=256)
    max_text_chars: int = Field(4000, ge=16)
    max_entities: int = Field(64, ge=0)
    # Event times further ahead than this are refused (one item stamped in 2999 would
    # otherwise close every alert window of its partition at once).
    max_future_s: float = Field(86_400.0, ge=0)

    # Scoring
    device: str = "auto"
    batch_size: int = Field(64, ge=1, le=4096)
    batch_timeout_ms: int = Field(20, ge=0)
    max_length: int = Field(128, ge=8, le=512)
    # Forward passes in length-sorted micro-batches of this size (None: 16 on CPU,
    # the whole batch on a GPU).
    micro_batch_size: int | None = Field(None, ge=1, le=4096)
    neighbors_k: int = Field(5, ge=0, le=100)
    # Exact (flat) search up to this many vectors, then an approximate IVF index.
    exact_index_max: int = Field(200_000, ge=1000)
    index_snapshot_every: int = Field(5000, ge=100, description="items between index snapshots")

    # Drift detectors per worker, on every scored item ("off" switches one off).
    drift_confidence: str = "adwin"
    drift_label_mix: str = "adwin"
    drift_embedding: str = "embedding_shift"
    drift_warmup: int = Field(200, ge=0)
    drift_cooldown: int = Field(1000, ge=0)

    # The continual learner (see learner/config.py for every field).
    learner: LearnerConfig = LearnerConfig()

    # Entities, topics and alerts (see stream/alerts.py for every rule setting:
    # MOODWIRE_ALERTS__WINDOW_S=300, MOODWIRE_ALERTS__NEGATIVE_SURGE__Z=5, …).
    watchlist: Path | None = None  # YAML/CSV of tickers, names, aliases (None: the shipped one)
    taxonomy: Path | None = None  # YAML of topics with descriptions and examples (None: shipped)
    alerts: AlertConfig = AlertConfig()
    webhook_url: str | None = None  # alerts are also POSTed here as JSON
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_retries: int = Field(3, ge=0)

    # Outages (broker, store, disk) are waited out: retries back off exponentially with
    # jitter from retry_initial_s to retry_max_s between attempts, for as long as it takes.
    retry_initial_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(30.0, gt=0, le=600)

    # Operations
    operator_token: SecretStr | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("bootstrap_servers must name at least one host:port")
        return v.strip()

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None  # unset, or set empty (compose's ${VAR:-})
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url must start with http:// or https://, got {v[:40]!r}")
        return v.strip()

    @field_validator("operator_token", mode="before")
    @classmethod
    def _token_set_or_none(cls, v: object) -> object:
        # Set empty (compose's ${VAR:-}) means unset: the dashboard is view-only.
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.data_dir / 'moodwire.db').resolve()}"

    def resolved_registry(self) -> Path:
        return self.registry if self.registry is not None else self.data_dir / "registry"

    def open_registry(self) -> AnyRegistry:
        """The model registry: shared in ``registry_url``'s database, or the local directory."""
        from state.shared_registry import open_registry  # SQLAlchemy: only where it is used

        return open_registry(self.resolved_registry(), self.registry_url)

    def resolved_index_dir(self) -> Path:
        return self.index_dir if self.index_dir is not None else self.data_dir / "index"

    def to_env(self) -> dict[str, str]:
        """``MOODWIRE_*`` variables that hand these settings to a child process."""
        env = {
            "MOODWIRE_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "MOODWIRE_DATA_DIR": str(self.data_dir),
            "MOODWIRE_REGISTRY": str(self.resolved_registry()),
            "MOODWIRE_STORE_URL": self.resolved_store_url(),
            "MOODWIRE_INDEX_DIR": str(self.resolved_index_dir()),
            "MOODWIRE_CONSUMER_GROUP": self.consumer_group,
            "MOODWIRE_DEVICE": self.device,
            "MOODWIRE_BATCH_SIZE": str(self.batch_size),
            "MOODWIRE_LOG_LEVEL": self.log_level,
        }
        for name, value in self.topics.model_dump().items():
            env[f"MOODWIRE_TOPICS__{name.upper()}"] = value
        for name in ("drift_confidence", "drift_label_mix", "drift_embedding"):
            env[f"MOODWIRE_{name.upper()}"] = getattr(self, name)
        env["MOODWIRE_DRIFT_WARMUP"] = str(self.drift_warmup)
        env["MOODWIRE_DRIFT_COOLDOWN"] = str(self.drift_cooldown)
        env["MOODWIRE_ALERTS"] = json.dumps(dataclasses.asdict(self.alerts))
        for name in ("watchlist", "taxonomy", "webhook_url", "registry_url"):
            if getattr(self, name) is not None:
                env[f"MOODWIRE_{name.upper()}"] = str(getattr(self, name))
        for name, value in dataclasses.asdict(self.learner).items():
            if value is not None:
                env[f"MOODWIRE_LEARNER__{name.upper()}"] = str(value)
        if self.operator_token is not None:
            env["MOODWIRE_OPERATOR_TOKEN"] = self.operator_token.get_secret_value()
        return env

    def kafka(self) -> KafkaConfig:
        """What every Kafka client of a process needs."""
        return KafkaConfig(
            bootstrap_servers=self.bootstrap_servers,
            max_message_bytes=self.max_message_bytes,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_poll_records=self.batch_size,
        )

    def operations(self) -> OperationsConfig:
        """Where an operator's actions (promote, rollback, retrain, corrections) land."""
        return OperationsConfig(
            store_url=self.resolved_store_url(),
            registry=self.resolved_registry(),
            registry_url=self.registry_url,
            kafka=self.kafka(),
            topics=self.topics,
            partitions=self.partitions,
            operator_token=self.operator_token,
        )

    def limits(self) -> Limits:
        """What an input may be before it is dead-lettered."""
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_text_chars=self.max_text_chars,
            max_entities=self.max_entities,
            max_future_s=self.max_future_s,
        )

    def worker(self) -> WorkerConfig:
        """What one scoring worker reads, writes and waits for."""
        return WorkerConfig(
            topics=self.topics,
            consumer_group=self.consumer_group,
            batch_size=self.batch_size,
            batch_timeout_ms=self.batch_timeout_ms,
            limits=self.limits(),
            neighbors_k=self.neighbors_k,
            retry_initial_s=self.retry_initial_s,
            retry_max_s=self.retry_max_s,
        )

    def scorer(self) -> dict[str, Any]:
        """Keyword arguments of :func:`stream.scorer.load_serving`."""
        return {
            "device": self.device,
            "max_length": self.max_length,
            "micro_batch": self.micro_batch_size,
        }

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        return type(self)(**{**self.model_dump(), **given})
