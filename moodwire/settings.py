"""One validated, frozen settings object, built at the entry point and passed down.

Every field can be set from the environment with the ``MOODWIRE_`` prefix
(``MOODWIRE_BOOTSTRAP_SERVERS``, ``MOODWIRE_STORE_URL``, ``MOODWIRE_REGISTRY``, …;
nested blocks with ``__``: ``MOODWIRE_KAFKA__SECURITY_PROTOCOL``), from a ``.env``
file in the working directory, and from files in a secrets directory
(``MOODWIRE_SECRETS_DIR``, default ``/run/secrets`` where it exists: a file named
``moodwire_kafka__sasl_password`` holds that secret). CLI flags override all of
them. A ``MOODWIRE_*`` variable that names no setting is an error, not ignored
(a typo would otherwise leave a cluster unsecured). Components never read
``os.environ``.

>>> s = Settings(bootstrap_servers="127.0.0.1:1", data_dir="/tmp/mw")
>>> s.topics.news, s.topics.dlq
('news', 'news.dlq')
>>> str(s.resolved_registry())
'/tmp/mw/registry'
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from learner.config import LearnerConfig
from stream.alerts import AlertConfig
from stream.config import (
    KafkaConfig,
    KafkaSecurity,
    OperationsConfig,
    SignInPolicy,
    Topics,
    WorkerConfig,
)
from stream.destinations import Destination, destinations_from, parse_destinations
from stream.masking import DEFAULT_PHONE_REGIONS, Masker, check_regions
from stream.origins import Signer, Trust
from stream.validate import Limits

if TYPE_CHECKING:
    from state.shared_registry import AnyRegistry


# -- access control: named users and roles (users live in the store: `moodwire users`) --
class AccessSettings(BaseModel):
    """The lock-out of failed sign-ins (MOODWIRE_ACCESS__MAX_FAILURES, …)."""

    model_config = ConfigDict(frozen=True)

    max_failures: int = Field(5, ge=1, description="failed sign-ins per user name in the window")
    max_client_failures: int = Field(20, ge=1, description="failed sign-ins per client")
    window_s: float = Field(900.0, gt=0, le=86_400, description="seconds the failures count")
    require_sign_in: bool = False  # true: the dashboard shows nothing before a sign-in

    def policy(self) -> SignInPolicy:
        return SignInPolicy(
            self.max_failures, self.max_client_failures, self.window_s, self.require_sign_in
        )


class Settings(BaseSettings):
    """Everything a Moodwire process needs to know, validated once."""

    model_config = SettingsConfigDict(
        # Errors never echo their input: it may hold a password.
        hide_input_in_errors=True,
        env_prefix="MOODWIRE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        env_file=".env",
        env_file_encoding="utf-8",
    )

    # Where state lives by default (SQLite store, registry, index) when not given explicitly.
    data_dir: Path = Path("moodwire-data")

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    # How every client connects: TLS, SASL, client id, offsets reset, topic creation
    # (MOODWIRE_KAFKA__SECURITY_PROTOCOL=SASL_SSL, …; see stream/config.py KafkaSecurity).
    kafka: KafkaSecurity = KafkaSecurity()
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
    # A secret: it holds the database password (postgresql+psycopg://user:PASSWORD@host/db).
    store_url: SecretStr | None = None
    registry: Path | None = None
    index_dir: Path | None = None

    # -- Several hosts (issue 15) ----------------------------------------------------------
    # The model registry shared by every host: a SQL URL (postgresql://…, usually the
    # store's) holds the versions and the serving pointer, and `registry` (default
    # DATA_DIR/registry) becomes this host's cache of verified copies. Unset (or
    # file:///DIR): the registry is the local directory, as on one machine. A secret: a
    # database URL holds its password.
    registry_url: SecretStr | None = None

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
    # auto: ONNX Runtime on the CPU for a version that carries its export, else the
    # fused PyTorch pass; torch: never ONNX; onnx: like auto, warning when a version has none.
    runtime: Literal["auto", "onnx", "torch"] = "auto"
    neighbors_k: int = Field(5, ge=0, le=100)
    # Exact (flat) search up to this many vectors, then an approximate IVF index; the
    # default is retrieval.index.EXACT_MAX, measured by `moodwire bench retrieval`.
    exact_index_max: int = Field(50_000, ge=1000)
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
    # Alerts are also POSTed here as JSON. A secret: such URLs carry their token.
    webhook_url: SecretStr | None = None
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_retries: int = Field(3, ge=0)

    # -- Alert destinations (issue 15: alert channels; see stream/destinations.py) ---------
    # Slack, Teams, PagerDuty, e-mail (apprise URLs) and https:// webhooks, each with the
    # least severity it hears of: MOODWIRE_NOTIFY='[{"url": "slack://…",
    # "min_severity": "critical"}]'. webhook_url above is one more, for every severity.
    notify: Annotated[tuple[Destination, ...], NoDecode] = ()
    webhook_secret: SecretStr | None = None  # signs the generic webhook's body (HMAC-SHA256)
    dashboard_url: str | None = None  # the dashboard's public address: messages link to it

    # Outages (broker, store, disk) are waited out: retries back off exponentially with
    # jitter from retry_initial_s to retry_max_s between attempts, for as long as it takes.
    retry_initial_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(30.0, gt=0, le=600)

    # Operations
    access: AccessSettings = AccessSettings()  # access control (see AccessSettings)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # -- Origins: who may train the model (stream/origins.py) --------------------------
    # HMAC-SHA256 keys by origin name: MOODWIRE_ORIGINS='{"dashboard":"…","labeller:acme":"…"}',
    # and/or a JSON file of the same (MOODWIRE_ORIGINS_FILE, e.g. a mounted secret; its keys
    # win). A sender needs only its own key (the dashboard "dashboard", the CLI "cli", a
    # worker "worker", the learner "learner"); the learner needs those of the origins in
    # MOODWIRE_LEARNER__LABEL_ORIGINS and __CONTROL_ORIGINS. With none, nothing is signed
    # and the learner trains on no label and obeys no command from Kafka.
    origins: dict[str, SecretStr] = Field(default_factory=dict)
    origins_file: Path | None = None

    # -- Privacy (issue 15): personal data masked before anything is stored ------------
    # Off by default. On: e-mails, phones, IBANs, cards and account numbers in each item
    # (and label texts) become [EMAIL], [PHONE], ... where the item is parsed, so only the
    # masked text is scored, embedded, indexed, stored and published; dead letters keep a
    # masked preview and a sha256 instead of the raw bytes (see stream/masking.py).
    mask_personal_data: bool = False
    # Regions whose national phone formats are recognised (international +... always are).
    mask_phone_regions: str = ",".join(DEFAULT_PHONE_REGIONS)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("bootstrap_servers must name at least one host:port")
        return v.strip()

    @field_validator("mask_phone_regions")
    @classmethod
    def _known_regions(cls, v: str) -> str:
        return ",".join(check_regions(v.split(",")))

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _webhook_is_http(cls, v: object) -> object:
        if isinstance(v, SecretStr):
            v = v.get_secret_value()
        if v is None or (isinstance(v, str) and not v.strip()):
            return None  # unset, or set empty (compose's ${VAR:-})
        if not isinstance(v, str) or not v.strip().startswith(("http://", "https://")):
            # Not the value: a webhook URL holds its token.
            raise ValueError("webhook_url must start with http:// or https://")
        return SecretStr(v.strip())

    @field_validator("notify", mode="before")
    @classmethod
    def _destinations(cls, v: object) -> object:
        if isinstance(v, str):
            return parse_destinations(v)
        return destinations_from(v) if v else ()

    @field_validator("dashboard_url")
    @classmethod
    def _dashboard_is_http(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.strip().startswith(("http://", "https://")):
            raise ValueError("dashboard_url must start with http:// or https://")
        return v.strip().rstrip("/")

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _secret_set_or_none(cls, v: object) -> object:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    @field_validator("store_url", "registry_url", mode="before")
    @classmethod
    def _store_url_set_or_none(cls, v: object) -> object:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        return v

    @field_validator("origins")
    @classmethod
    def _origin_names(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        from stream.origins import valid_origin_name

        bad = [name for name in v if not valid_origin_name(name)]
        if bad:
            raise ValueError(
                f"origin names are letters, digits and :._@/- (no spaces), got {bad[0][:40]!r}"
            )
        return v

    def resolved_store_url(self) -> str:
        if self.store_url is not None:
            return self.store_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'moodwire.db').resolve()}"

    def resolved_registry_url(self) -> str | None:
        """The shared registry's database URL, password included (None: the directory)."""
        return self.registry_url.get_secret_value() if self.registry_url is not None else None

    def resolved_registry(self) -> Path:
        return self.registry if self.registry is not None else self.data_dir / "registry"

    def open_registry(self) -> AnyRegistry:
        """The model registry: shared in ``registry_url``'s database, or the local directory."""
        from state.shared_registry import open_registry  # SQLAlchemy: only where it is used

        return open_registry(self.resolved_registry(), self.resolved_registry_url())

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
            "MOODWIRE_MASK_PERSONAL_DATA": str(self.mask_personal_data).lower(),
            "MOODWIRE_MASK_PHONE_REGIONS": self.mask_phone_regions,
        }
        for name, value in self.topics.model_dump().items():
            env[f"MOODWIRE_TOPICS__{name.upper()}"] = value
        for name, value in self.kafka:
            if value is not None:
                value = value.get_secret_value() if isinstance(value, SecretStr) else value
                env[f"MOODWIRE_KAFKA__{name.upper()}"] = str(value)
        for name in ("drift_confidence", "drift_label_mix", "drift_embedding"):
            env[f"MOODWIRE_{name.upper()}"] = getattr(self, name)
        env["MOODWIRE_DRIFT_WARMUP"] = str(self.drift_warmup)
        env["MOODWIRE_DRIFT_COOLDOWN"] = str(self.drift_cooldown)
        env["MOODWIRE_ALERTS"] = json.dumps(dataclasses.asdict(self.alerts))
        if self.webhook_url is not None:
            env["MOODWIRE_WEBHOOK_URL"] = self.webhook_url.get_secret_value()
        if self.registry_url is not None:
            env["MOODWIRE_REGISTRY_URL"] = self.registry_url.get_secret_value()
        for name in ("watchlist", "taxonomy"):
            if getattr(self, name) is not None:
                env[f"MOODWIRE_{name.upper()}"] = str(getattr(self, name))
        for name, value in dataclasses.asdict(self.learner).items():
            if value is not None:
                text = ",".join(value) if isinstance(value, tuple) else str(value)
                env[f"MOODWIRE_LEARNER__{name.upper()}"] = text
        if self.origins:
            keys = {k: v.get_secret_value() for k, v in self.origins.items()}
            env["MOODWIRE_ORIGINS"] = json.dumps(keys)
        if self.origins_file is not None:
            env["MOODWIRE_ORIGINS_FILE"] = str(self.origins_file)
        for name, value in self.access.model_dump().items():
            env[f"MOODWIRE_ACCESS__{name.upper()}"] = str(value)
        # Alert destinations (secrets: the child needs them to send).
        if self.notify:
            env["MOODWIRE_NOTIFY"] = json.dumps(
                [{**d.model_dump(), "url": d.url.get_secret_value()} for d in self.notify]
            )
        if self.webhook_secret is not None:
            env["MOODWIRE_WEBHOOK_SECRET"] = self.webhook_secret.get_secret_value()
        if self.dashboard_url is not None:
            env["MOODWIRE_DASHBOARD_URL"] = self.dashboard_url
        return env

    def origin_keys(self) -> dict[str, SecretStr]:
        """Every configured origin key (``origins``, then ``origins_file`` over it)."""
        keys = dict(self.origins)
        if self.origins_file is not None:
            try:
                loaded = json.loads(self.origins_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"MOODWIRE_ORIGINS_FILE {self.origins_file}: cannot read a JSON object of "
                    f"origin keys ({type(exc).__name__})"
                ) from None
            if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                raise ValueError(
                    f"MOODWIRE_ORIGINS_FILE {self.origins_file}: expected a JSON object of "
                    'origin names to keys, e.g. {"dashboard": "…"}'
                )
            keys |= {str(k): SecretStr(v) for k, v in loaded.items()}
        return {k: v for k, v in keys.items() if v.get_secret_value()}

    def signer(self, origin: str) -> Signer | None:
        """What signs this process's labels and commands as ``origin`` (None: no key for it)."""
        key = self.origin_keys().get(origin)
        return Signer(origin, key) if key is not None else None

    def label_trust(self) -> Trust:
        """Whose labels the learner trains on."""
        return Trust(self.origin_keys(), frozenset(self.learner.label_origins))

    def control_trust(self) -> Trust:
        """Whose commands the learner takes (signed, within the replay window): operators'
        and, for drift announcements only, the workers' and its own."""
        return Trust(
            self.origin_keys(),
            frozenset(self.learner.control_origins) | frozenset(self.learner.drift_origins),
            max_age_s=self.learner.control_max_age_s,
        )

    def kafka_config(self) -> KafkaConfig:
        """What every Kafka client of a process needs."""
        return KafkaConfig(
            bootstrap_servers=self.bootstrap_servers,
            security=self.kafka,
            max_message_bytes=self.max_message_bytes,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_poll_records=self.batch_size,
        )

    def operations(self, origin: str = "cli") -> OperationsConfig:
        """Where an operator's actions (promote, rollback, retrain, corrections) land;
        what they send is signed as ``origin`` (the dashboard's: ``"dashboard"``)."""
        return OperationsConfig(
            store_url=self.resolved_store_url(),
            registry=self.resolved_registry(),
            registry_url=self.resolved_registry_url(),
            kafka=self.kafka_config(),
            topics=self.topics,
            partitions=self.partitions,
            sign_in=self.access.policy(),
            signer=self.signer(origin),
        )

    def destinations(self) -> tuple[Destination, ...]:
        """Where alerts go: ``notify``, plus ``webhook_url`` as a webhook for every severity."""
        out = list(self.notify)
        if self.webhook_url:
            url = getattr(self.webhook_url, "get_secret_value", lambda: self.webhook_url)()
            legacy = Destination(
                url=url, min_severity="warning", name="webhook",
                retries=self.webhook_retries, timeout_s=self.webhook_timeout_s,
            )  # fmt: skip
            if legacy.key not in {d.key for d in out}:
                out.append(legacy)
        return tuple(out)

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
            signer=self.signer("worker"),
            masker=self.masker(),
        )

    def masker(self) -> Masker | None:
        """The masker of personal data, when ``mask_personal_data`` is on."""
        if not self.mask_personal_data:
            return None
        return Masker(phone_regions=self.mask_phone_regions.split(","))

    def scorer(self) -> dict[str, Any]:
        """Keyword arguments of :func:`stream.scorer.load_serving`."""
        return {
            "device": self.device,
            "max_length": self.max_length,
            "micro_batch": self.micro_batch_size,
            "runtime": self.runtime,
        }

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        # model_dump keeps SecretStr objects as they are: a copy never reveals a secret.
        return type(self)(**{**dict(self), **given})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, then the environment, then .env, then the secrets directory.
        from pydantic_settings import NestedSecretsSettingsSource

        secrets_dir = os.environ.get("MOODWIRE_SECRETS_DIR")
        if secrets_dir:
            if not Path(secrets_dir).is_dir():
                raise ValueError(f"MOODWIRE_SECRETS_DIR {secrets_dir}: no such directory")
        elif Path("/run/secrets").is_dir():
            secrets_dir = "/run/secrets"
        sources = [init_settings, env_settings, dotenv_settings]
        if secrets_dir:
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings,
                    secrets_dir=secrets_dir,
                    secrets_nested_delimiter="__",
                    secrets_case_sensitive=False,
                )
            )
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: Any) -> Any:
        unknown_variables(os.environ)
        dotenv = Path(".env")
        if dotenv.is_file():
            from dotenv import dotenv_values

            unknown_variables(
                {k: v or "" for k, v in dotenv_values(dotenv).items()}, where=".env: "
            )
        return data


# Variables that are read outside the settings, not fields: where to find secrets, the
# credential a CLI action presents, and the tools of the benches and tests.
_NOT_FIELDS = frozenset(
    {
        "MOODWIRE_SECRETS_DIR",
        "MOODWIRE_CREDENTIAL",
        "MOODWIRE_USER",
        "MOODWIRE_CHROMIUM",
        "MOODWIRE_SCREENSHOTS",
        "MOODWIRE_TEST_PG",
    }
)


def setting_names() -> set[str]:
    """Every ``MOODWIRE_*`` name the settings read (nested blocks with ``__``), upper case.

    >>> names = setting_names()
    >>> {"MOODWIRE_KAFKA__SASL_PASSWORD", "MOODWIRE_LEARNER__REQUIRE_APPROVAL"} <= names
    True
    """
    names = set(_NOT_FIELDS)

    def walk(prefix: str, model: Any) -> None:
        fields: dict[str, Any]
        if isinstance(model, type) and issubclass(model, BaseModel):
            fields = {n: f.annotation for n, f in model.model_fields.items()}
        elif dataclasses.is_dataclass(model):
            hints = typing.get_type_hints(model)
            fields = {f.name: hints.get(f.name) for f in dataclasses.fields(model)}
        else:
            return
        for name, annotation in fields.items():
            full = f"{prefix}{name.upper()}"
            names.add(full)
            for inner in _classes_in(annotation):
                walk(f"{full}__", inner)

    walk("MOODWIRE_", Settings)
    return names


def _classes_in(annotation: Any) -> list[type]:
    if isinstance(annotation, type):
        return (
            [annotation]
            if issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
            else []
        )
    return [c for arg in typing.get_args(annotation) for c in _classes_in(arg)]


def unknown_variables(environ: typing.Mapping[str, str], where: str = "") -> None:
    """Refuse a ``MOODWIRE_*`` variable that no setting reads, with the nearest real name.

    >>> unknown_variables({"MOODWIRE_SECURITY_PROTOCOL": "SASL_SSL"})
    Traceback (most recent call last):
    ...
    ValueError: MOODWIRE_SECURITY_PROTOCOL is not a Moodwire setting (did you mean MOODWIRE_KAFKA__SECURITY_PROTOCOL?)
    >>> unknown_variables({"MOODWIRE_KAFKA__SASL_PASSWORD": "x", "HOME": "/root"})
    """
    known = _known_names()
    wrong = sorted(
        k for k in environ if k.upper().startswith("MOODWIRE_") and k.upper() not in known
    )
    if not wrong:
        return
    parts = []
    for name in wrong:
        if name.upper() in _REMOVED:
            parts.append(f"{where}{name} was removed: {_REMOVED[name.upper()]}")
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        if not close:
            tail = name.upper().removeprefix("MOODWIRE_")
            close = sorted(k for k in known if k.endswith(f"__{tail}"))[:1]
        parts.append(
            f"{where}{name} is not a Moodwire setting"
            + (f" (did you mean {close[0]}?)" if close else "")
        )
    raise ValueError("; ".join(parts))


# Settings that existed once, and what took their place.
_REMOVED = {
    "MOODWIRE_OPERATOR_TOKEN": "operators are named users with roles now "
    "(moodwire users add NAME --role operator); see the README's Users and roles",
}

_known: set[str] | None = None


def _known_names() -> set[str]:
    global _known
    if _known is None:
        _known = setting_names()
    return _known
