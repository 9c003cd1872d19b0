"""The stream's own small, frozen configuration: Kafka clients, topic names, the worker.

``moodwire.settings.Settings`` composes these from the environment and the CLI
(``Settings.kafka()``, ``Settings.worker()``); nothing in ``stream`` sees the
whole settings object.

>>> KafkaConfig("127.0.0.1:9092").max_fetch_bytes
1048576
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

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


@dataclass(frozen=True)
class KafkaConfig:
    """How every Kafka client of a process connects and sizes its fetches."""

    bootstrap_servers: str
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


@dataclass(frozen=True)
class OperationsConfig:
    """Where an operator's actions land: the store, the registry, the control and label topics."""

    store_url: str
    registry: Path
    kafka: KafkaConfig
    topics: Topics = Topics()
    partitions: int = 4
    operator_token: SecretStr | None = None
    registry_url: str | None = None  # a shared registry's database (None: the directory)
