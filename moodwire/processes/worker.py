"""Assembling processes from their parts (the one place that knows all of them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import structlog

from learner.drift import StreamMonitor
from moodwire.processes.leader import alerter_lock
from moodwire.settings import Settings
from retrieval.past_items import PastItems
from state.store import Store
from stream.active_alerter import ActiveAlerter
from stream.alerting import Alerter
from stream.clients import ensure_topics, make_consumer, make_producer, make_reader
from stream.entities import EntityTagger, WatchList
from stream.errors import BrokerError
from stream.health import HealthServer, Readiness
from stream.health import serve_health as health_server
from stream.notify import Notifier
from stream.outage import Health, Waiter, is_outage
from stream.publish import Publisher
from stream.scorer import Scorer, ServingWatcher, load_serving
from stream.topics import Taxonomy, TopicModel
from stream.worker import Worker

log = structlog.get_logger(__name__)

T = TypeVar("T")


def stream_monitor(settings: Settings, **overrides: int) -> StreamMonitor:
    """The worker's drift detectors, as the settings name them."""
    return StreamMonitor(
        confidence=settings.drift_confidence,
        label_mix=settings.drift_label_mix,
        embedding=settings.drift_embedding,
        warmup=settings.drift_warmup,
        cooldown=settings.drift_cooldown,
        **overrides,
    )


def entity_tagger(settings: Settings) -> EntityTagger:
    """Cashtags, the feed's entities, and the watch list the settings name (or the shipped one)."""
    watch = WatchList.load(settings.watchlist) if settings.watchlist else WatchList.default()
    return EntityTagger(watch)


def topic_model(settings: Settings, embed: Callable[[list[str]], np.ndarray]) -> TopicModel:
    """Zero-shot topics in the frozen space, from the taxonomy the settings name."""
    taxonomy = Taxonomy.load(settings.taxonomy) if settings.taxonomy else Taxonomy.default()
    return TopicModel(taxonomy, embed)


def serve_health(settings: Settings, health: Health, ready: Readiness) -> HealthServer | None:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``MOODWIRE_METRICS_PORT``, when set."""
    server = health_server(health, ready, port=settings.metrics_port, host=settings.metrics_host)
    if server is not None:
        log.info("health_listening", port=server.port, paths=["/healthz", "/readyz", "/metrics"])
    return server


def worker_readiness(worker: Worker) -> Readiness:
    """Ready: a model serves and the worker holds partitions (dependencies: the server's part)."""

    def ready() -> tuple[bool, dict]:
        partitions = worker.assigned_partitions
        return bool(worker.scorer.version) and partitions > 0, {
            "model_version": worker.scorer.version,
            "partitions": partitions,
        }

    return ready


class CorrectedTopics:
    """Assigns topics, folding in analysts' topic corrections from the store now and then."""

    def __init__(self, model: TopicModel, store: Store, refresh_s: float = 60.0) -> None:
        self.model = model
        self.store = store
        self.refresh_s = refresh_s
        self._seq = 0
        self._next = 0.0

    def refresh(self) -> int:
        rows = self.store.topic_corrections(self._seq)
        if not rows:
            return 0
        self._seq = int(rows[-1]["seq"])
        known = set(self.model.topic_names())
        wanted = {r["item_id"]: r["topic"] for r in rows if r["topic"] in known}
        for r in rows:
            if r["topic"] not in known:
                log.warning(
                    "topic_correction_unknown_topic", item_id=r["item_id"], topic=r["topic"]
                )
        ids, vectors = self.store.embeddings_by_ids(list(wanted))
        if ids:
            self.model.add_corrections(vectors, [wanted[i] for i in ids])
            log.info("topic_corrections_learned", n=len(ids))
        return len(ids)

    def __call__(self, vectors: np.ndarray) -> list[str | None]:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.refresh_s
            try:
                self.refresh()
            except Exception:  # advisory: topics without the newest corrections
                log.exception("topic_corrections_failed")
        return [topic for topic, _ in self.model.assign(vectors)]


def wait_for(
    what: str,
    make: Callable[[], T],
    health: Health,
    stop: threading.Event | None,
    settings: Settings,
) -> T:
    """``make()``, retried while its dependency is down (a process starting in an outage
    waits for it, as a running one does)."""
    waiter = Waiter(
        health,
        stop or threading.Event(),
        initial_s=settings.retry_initial_s,
        max_s=settings.retry_max_s,
    )
    return waiter.run(
        make, what, transient=lambda e: is_outage(e) or isinstance(e, BrokerError), what=what
    )


def build_worker(
    settings: Settings, *, scorer: Scorer | None = None, stop: threading.Event | None = None
) -> tuple[Worker, Callable[[], None]]:
    """A ready worker and the function that closes everything it opened.

    The worker follows the registry's serving version between batches and
    watches the scored stream with the drift detectors the settings name. A
    store or broker that is down at start is waited for (until ``stop``).
    """
    health = Health("worker")
    store = wait_for("store", lambda: Store(settings.resolved_store_url()), health, stop, settings)
    # Watch the pointer before loading: a promotion while the model loads is seen at once.
    registry = wait_for("registry", settings.open_registry, health, stop, settings)
    serving = ServingWatcher(registry)
    scorer = scorer or load_serving(registry, **settings.scorer())
    monitor = stream_monitor(settings)
    past = PastItems(
        store,
        dim=scorer.embedder.dim,
        space_id=scorer.embedder.space_id,
        snapshot_dir=settings.resolved_index_dir(),
        exact_max=settings.exact_index_max,
        snapshot_every=settings.index_snapshot_every,
    )
    topics = settings.topics
    wait_for(
        "kafka",
        lambda: ensure_topics(
            settings.kafka_config(),
            [topics.news, topics.scored, topics.dlq, topics.control, topics.alerts],
            settings.partitions,
        ),
        health,
        stop,
        settings,
    )
    publisher = Publisher(
        lambda: make_producer(settings.kafka_config(), client_id="moodwire-worker"),
        make_reader=lambda: make_reader(settings.kafka_config(), client_id="moodwire-replay-check"),
    )
    consumer = make_consumer(
        settings.kafka_config(),
        topics.news,
        group_id=settings.consumer_group,
        client_id="moodwire-worker",
    )
    # Alert destinations (Slack, Teams, PagerDuty, e-mail, webhooks): see stream/notify.py.
    destinations = settings.destinations()
    secret = settings.webhook_secret
    notifier = (
        Notifier.build(
            destinations,
            store,
            webhook_secret=secret.get_secret_value().encode() if secret else None,
            dashboard_url=settings.dashboard_url,
            window_s=settings.alerts.window_s,
            cooldown_s=settings.alerts.cooldown_s,
        )
        if destinations
        else None
    )

    def publish(key: str, value: bytes) -> None:
        publisher.send_nowait(topics.alerts, key.encode(), value, "alert_publish")

    # Every partition of the news topic holds the event-time watermark back until it speaks.
    partitions = consumer.partitions_for_topic(topics.news) or range(settings.partitions)

    def rules() -> Alerter:
        return Alerter(
            store,
            settings.alerts,
            search=past.similar,
            publish=publish,
            notifier=notifier,
            source_topic=topics.news,
            partitions=sorted(partitions),
        )

    # One worker of the group runs the alert rules (the lock's holder); the others stand by.
    lock = alerter_lock(settings)
    alerter = ActiveAlerter(rules, lock) if lock is not None else rules()
    worker = Worker(
        settings.worker(),
        store,
        scorer,
        past,
        consumer,
        publisher,
        monitor=monitor,
        serving=serving,
        tag_entities=entity_tagger(settings).tag,
        assign_topics=CorrectedTopics(topic_model(settings, scorer.embedder.embed), store),
        alerter=alerter,
        health=health,
    )
    server = serve_health(settings, health, worker_readiness(worker))

    def close() -> None:
        try:
            past.save()
        finally:
            if isinstance(alerter, ActiveAlerter):
                alerter.close()
            consumer.close(autocommit=False)
            publisher.close()
            if notifier is not None:
                notifier.close(timeout_s=5)
            if server is not None:
                server.close()

    return worker, close
