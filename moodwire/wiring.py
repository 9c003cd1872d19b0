"""Assembling processes from their parts (the one place that knows all of them)."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from learner.drift import StreamMonitor
from learner.registry import Registry
from moodwire.settings import Settings
from moodwire.store import Store
from retrieval.past_items import PastItems
from stream.broker import ensure_topics
from stream.clients import make_consumer, make_producer
from stream.scorer import Scorer, ServingWatcher, load_serving
from stream.worker import Worker

log = structlog.get_logger(__name__)


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


def build_worker(
    settings: Settings, *, scorer: Scorer | None = None
) -> tuple[Worker, Callable[[], None]]:
    """A ready worker and the function that closes everything it opened.

    The worker follows the registry's serving version between batches and
    watches the scored stream with the drift detectors the settings name.
    """
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics_listening", port=settings.metrics_port)
    store = Store(settings.resolved_store_url())
    # Watch the pointer before loading: a promotion while the model loads is seen at once.
    serving = ServingWatcher(Registry(settings.resolved_registry()))
    scorer = scorer or load_serving(settings)
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
    ensure_topics(
        settings.bootstrap_servers,
        [topics.news, topics.scored, topics.dlq, topics.control],
        settings.partitions,
    )
    producer = make_producer(settings, client_id="moodwire-worker")
    consumer = make_consumer(
        settings, topics.news, group_id=settings.consumer_group, client_id="moodwire-worker"
    )
    worker = Worker(
        settings, store, scorer, past, consumer, producer, monitor=monitor, serving=serving
    )

    def close() -> None:
        try:
            past.save()
        finally:
            consumer.close(autocommit=False)
            producer.close()

    return worker, close
