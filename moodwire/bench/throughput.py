"""``moodwire bench throughput``: the full scoring path against the bare model rate.

Everything runs for real: an embedded broker on a free port, a fresh SQLite
store, the same :class:`~stream.worker.Worker` the ``worker`` command runs.
Measured in one run on one device:

* ``bare_forward_items_per_s``: tokenisation plus forward passes of every model
  the path runs (the served classifier and the frozen embedder), batch by
  batch as the worker feeds them, with no I/O;
* ``items_per_s``: records through consume → score → retrieve → store →
  publish → commit, from a pre-filled topic;
* latency from produce (the Kafka timestamp) to stored, while items arrive at
  half the measured rate;
* ``peer_items_per_s``: what a user would otherwise write (:mod:`moodwire.bench.peer`:
  a kafka-python consumer in its own group, a ``transformers`` text-classification
  pipeline with the same weights, a sentence-transformers encoder, a flat FAISS
  index, the same kind of store, a commit per batch) on the same pre-filled topic,
  right after the path run (``--no-peer`` skips it).

With ``--sweep-batches`` also the bare rate at other batch sizes
(``batch_sweep_items_per_s``); with ``--while-training S`` the bare rate for ``S``
seconds alone and ``S`` seconds while a learner process
(:mod:`moodwire.bench.trainload`) fine-tunes on the same device
(``scoring_while_training_ratio``).

The headline is ``ratio = items_per_s / bare_forward_items_per_s``;
``peer_ratio = items_per_s / peer_items_per_s`` says how the path compares with
the peer; ``path_cost_in_classifier_forwards`` is the bare device path's time
per item over the classifier's alone (tokenisation included in both).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog
import torch

from moodwire.settings import Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")

SHARED_TEXTS = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / ("twitter-financial-news-sentiment/sent_train.csv")
)


def _texts(n: int, data: Path | None) -> tuple[list[str], str]:
    from learner.data import read_records

    if data is None and SHARED_TEXTS.is_file():
        data = SHARED_TEXTS
    if data is not None:
        rows = read_records(data)
        key = next(k for k in rows[0] if k.lower() in ("text", "sentence", "headline", "tweet"))
        texts = [str(r[key]) for r in rows]
        source = str(data)
    else:
        from stream.synthetic import demo_feed

        texts = [i["text"] for i in demo_feed(n, seed=11)]
        source = "generated"
    reps = -(-n // len(texts))
    return (texts * reps)[:n], source


def _on_a_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread of its own, as the worker runs, and its result.

    Every measured run (the bare forwards, the path, the peer) runs off the main
    thread, so all of them run their CPU forwards under the same kind of thread.
    On a loaded two-core machine the rate of the same classifier forwards, same
    batches, depended on the thread: 13-26 items/s on the main thread, 132-141 on
    another one once the main thread had run a forward, 11-19 on another one before
    (PyTorch's OpenMP intra-op pool; one intra-op thread ran at 113). Off the main
    thread is not enough to make such a machine steady: see the bracketing runs.
    """
    out: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            error.append(exc)

    thread = threading.Thread(target=run, name=f"bench-{fn.__name__}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return out[0]


def _bare_rate(scorer: Any, alone: Any, texts: list[str], batch_size: int) -> tuple[float, float]:
    """Items/s of the whole device path and of the classifier alone, same batches.

    ``alone`` is the classifier by itself in the path's own runtime (ONNX int8, or
    PyTorch): tokenising plus its forward; the path's cost is counted in it.
    """
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    micro = scorer.micro_batch or (batch_size if scorer.device.type == "cuda" else 16)
    scorer.score(batches[0])  # warm-up
    alone.score(batches[0], micro)
    t0 = time.perf_counter()
    for b in batches:
        scorer.score(b)
    full = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in batches:
        alone.score(b, micro)
    clf = len(texts) / (time.perf_counter() - t0)
    return full, clf


def _rate_for(scorer: Any, texts: list[str], batch_size: int, seconds: float) -> float:
    """Items/s of ``scorer.score`` over ``texts`` in batches, for at least ``seconds``."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    scorer.score(batches[0])  # warm-up (a new batch shape)
    done, t0 = 0, time.perf_counter()
    while True:
        for b in batches:
            scorer.score(b)
            done += len(b)
            if time.perf_counter() - t0 >= seconds:
                return done / (time.perf_counter() - t0)


def _while_training(
    cfg: Settings, scorer: Any, texts: list[str], device: torch.device, seconds: float
) -> dict[str, Any]:
    """Scoring rate alone, then while a learner process fine-tunes on the same device."""
    idle = _on_a_thread(_rate_for, scorer, texts, cfg.batch_size, seconds)
    cmd = [sys.executable, "-m", "moodwire.bench.trainload", "--device", str(device),
           "--max-length", str(cfg.max_length), "--seconds", str(seconds + 120)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        if "ready" not in (proc.stdout.readline() if proc.stdout else ""):
            raise RuntimeError("bench: the training process did not start")
        time.sleep(3.0)  # past its first steps
        busy = _on_a_thread(_rate_for, scorer, texts, cfg.batch_size, seconds)
        if proc.poll() is not None:
            raise RuntimeError("bench: the training process ended before the measurement did")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    trained = json.loads(out.strip().splitlines()[-1])
    return {
        "seconds": seconds,
        "idle_items_per_s": round(idle, 2),
        "items_per_s": round(busy, 2),
        "ratio": round(busy / idle, 3),
        "training_samples_per_s": trained["samples_per_s"],
        "training_device": trained["device"],
    }


def _fresh_scorer(cfg: Settings, device: Any, workdir: Path) -> Any:
    """The default encoder with a fresh head, written and loaded as a version is: its
    weights, its serving export, the engine the worker would pick."""
    from learner.classifier import SentimentClassifier
    from learner.runtime import save_version
    from retrieval.embedder import FrozenEmbedder
    from stream.scorer import Scorer

    embedder = FrozenEmbedder(device=device, max_length=cfg.max_length)
    fresh = SentimentClassifier.from_encoder(device="cpu", max_length=cfg.max_length)
    card: dict[str, Any] = {}
    save_version(fresh, card, embedder=embedder, export=cfg.runtime != "torch")(workdir)
    classifier = SentimentClassifier.from_pretrained(
        workdir, device=str(device), max_length=cfg.max_length
    )
    scorer = Scorer(
        classifier=classifier,
        embedder=embedder,
        version="bench-untrained",
        micro_batch=cfg.micro_batch_size,
        runtime=cfg.runtime,
    )
    scorer.prepare(classifier, scorer.version)
    return scorer


def throughput(
    settings: Settings,
    *,
    items: int,
    latency_items: int,
    data: Path | None,
    registry_given: bool,
    peer: bool = True,
    sweep_batches: tuple[int, ...] = (),
    while_training_s: float = 0.0,
) -> dict[str, Any]:
    from learner.classifier import select_device
    from learner.runtime import classifier_only
    from moodwire.processes.worker import build_worker
    from state.store import Store
    from stream.broker import EmbeddedBroker, free_port
    from stream.clients import make_producer
    from stream.scorer import load_serving

    texts, source = _texts(items + latency_items, data)
    with (
        tempfile.TemporaryDirectory(prefix="moodwire-bench-") as tmp,
        EmbeddedBroker(port=free_port(), log_path=Path(tmp) / "broker.log") as broker,
    ):
        cfg = settings.with_overrides(
            bootstrap_servers=broker.bootstrap_servers,
            store_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
            index_dir=Path(tmp) / "index",
            consumer_group="moodwire-bench",
        )
        device = select_device(cfg.device)
        if registry_given:
            scorer = load_serving(cfg.resolved_registry(), **cfg.scorer())
        else:
            # Speed does not depend on the weights: the default encoder with a fresh head.
            scorer = _fresh_scorer(cfg, device, Path(tmp) / "untrained")
        alone = classifier_only(scorer.engine, scorer.classifier, scorer.embedder, Path(tmp))
        bare_before, clf_before = _on_a_thread(
            _bare_rate, scorer, alone, texts[:items], cfg.batch_size
        )
        log.info(
            "bench_bare_forward",
            items_per_s=round(bare_before, 1),
            classifier_items_per_s=round(clf_before, 1),
        )

        producer = make_producer(cfg.kafka_config(), client_id="moodwire-bench")
        from stream.clients import ensure_topics

        ensure_topics(cfg.kafka_config(), cfg.topics.all(), cfg.partitions)
        for i, text in enumerate(texts[:items]):
            producer.send(
                cfg.topics.news,
                key=f"bench-{i}".encode(),
                value=json.dumps({"id": f"bench-{i}", "text": text}).encode(),
            )
        producer.flush()

        worker, close = build_worker(cfg, scorer=scorer)
        store = Store(cfg.resolved_store_url())
        marks: list[float] = []
        starts: list[float] = []
        orig_process = worker.process

        stage_totals: dict[str, float] = {}
        # The latency run's batches: how many records each, and where their time went.
        latency_sizes: list[int] = []
        path_sizes: list[int] = []
        latency_stages: dict[str, float] = {}

        def timed_process(records: list) -> Any:
            starts.append(time.perf_counter())
            out = orig_process(records)
            marks.append(time.perf_counter())
            totals = stage_totals if store_done[0] is False else latency_stages
            (latency_sizes if store_done[0] else path_sizes).append(len(records))
            for k, v in out.timings.items():
                totals[k] = totals.get(k, 0.0) + v
            finished[0] += out.stored  # last: a batch counts once its mark is taken
            return out

        finished = [0]  # items stored by batches whose marks are taken
        store_done = [False]

        worker.process = timed_process  # type: ignore[method-assign]
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        # CPU seconds during the path run: this process (the worker's threads and the
        # wait below) and the broker's, which shares this machine's cores with it.
        cpu0, broker0 = time.process_time(), broker.cpu_seconds()
        thread.start()
        try:
            # The worker's own count, not a query per tick: the wait must not take CPU
            # from the path it measures (the store is checked once the run is over).
            _wait(lambda: finished[0] >= items, 1800, "throughput run")
            cpu1, broker1 = time.process_time(), broker.cpu_seconds()
            store_done[0] = True
            elapsed = marks[-1] - starts[0]
            rate = items / elapsed
            busy = sum(m - s for s, m in zip(starts, marks, strict=False))
            log.info("bench_path", items_per_s=round(rate, 1))
            # The peer, on the same topic (it holds exactly the path's items now), while
            # the worker waits idle for the latency run.
            peer_result = (
                _on_a_thread(_peer, cfg, scorer, texts[:items], Path(tmp), device) if peer else None
            )

            # Latency at half the measured maximum rate, from a separate producer process
            # (`moodwire produce`), as a real feed would be.
            target = rate / 2
            feed = Path(tmp) / "latency.jsonl"
            feed.write_text(
                "".join(
                    json.dumps({"id": f"lat-{items + j}", "text": texts[items + j]}) + "\n"
                    for j in range(latency_items)
                )
            )
            subprocess.run(
                [sys.executable, "-m", "moodwire", "produce", str(feed), "--rate", f"{target:.3f}"],
                env={**os.environ, **cfg.to_env()},
                check=True,
                capture_output=True,
                timeout=600 + latency_items / max(target, 0.1),
            )
            _wait(lambda: finished[0] >= items + latency_items, 600, "latency run")
        finally:
            stop.set()
            thread.join(60)
            close()
            producer.close()
        # The bare rate again after the path run: the mean of both brackets the path
        # run in time, which matters on a noisy machine.
        bare_after, clf_after = _on_a_thread(
            _bare_rate, scorer, alone, texts[:items], cfg.batch_size
        )
        if (held := store.count_items()) != items + latency_items:
            raise RuntimeError(
                f"bench: the store holds {held} items, "
                f"not the {items + latency_items} the worker stored"
            )
        # The bare device path at other batch sizes (a GPU's sweet spot is far above 64).
        sweep = {
            str(b): round(_on_a_thread(_rate_for, scorer, texts[:items], b, 5.0), 2)
            for b in sweep_batches
        }
        training = (
            _while_training(cfg, scorer, texts[:items], device, while_training_s)
            if while_training_s > 0
            else None
        )
        bare = (bare_before + bare_after) / 2
        clf = (clf_before + clf_after) / 2
        lat = store.latencies_ms(id_prefix="lat-")
    return {
        "bench": "throughput",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "engine": scorer.engine.kind,
        "classifier_alone_engine": alone.kind,
        "model_version": scorer.version,
        "texts": source,
        "items": items,
        "batch_size": cfg.batch_size,
        "items_per_s": round(rate, 2),
        "bare_forward_items_per_s": round(bare, 2),
        "bare_forward_runs_items_per_s": [round(bare_before, 2), round(bare_after, 2)],
        "ratio": round(rate / bare, 3),
        "classifier_only_forward_items_per_s": round(clf, 2),
        "classifier_only_forward_runs_items_per_s": [round(clf_before, 2), round(clf_after, 2)],
        # (bare path's seconds per item) / (classifier's alone): (1 / bare) / (1 / clf).
        "path_cost_in_classifier_forwards": round(clf / bare, 3),
        "path_seconds": round(elapsed, 2),
        "seconds_in_batches": round(busy, 2),
        "path_batches": len(path_sizes),
        "path_mean_batch": round(float(np.mean(path_sizes)), 1) if path_sizes else None,
        "stage_seconds": {k: round(v, 2) for k, v in stage_totals.items()},
        "path_process_cpu_s": round(cpu1 - cpu0, 2),
        "path_broker_cpu_s": round(broker1 - broker0, 2)
        if broker0 is not None and broker1 is not None
        else None,
        "cpu_cores": os.cpu_count(),
        "latency_items": latency_items,
        "latency_offered_rate_items_per_s": round(target, 2),
        "p50_latency_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_latency_ms": round(float(np.percentile(lat, 99)), 1),
        "max_latency_ms": round(float(lat.max()), 1),
        "latency_batches": len(latency_sizes),
        "latency_mean_batch": round(float(np.mean(latency_sizes)), 1) if latency_sizes else None,
        "latency_stage_seconds": {k: round(v, 2) for k, v in latency_stages.items()},
        "batch_sweep_items_per_s": sweep or None,
        "while_training": training,
        "scoring_while_training_ratio": training["ratio"] if training else None,
        "peer_items_per_s": peer_result["items_per_s"] if peer_result else None,
        "peer_ratio": round(rate / peer_result["items_per_s"], 3) if peer_result else None,
        "peer": peer_result,
    }


def _peer(
    cfg: Settings, scorer: Any, texts: list[str], tmp: Path, device: torch.device
) -> dict[str, Any]:
    """The peer over the pre-filled topic; its figures, and what it stored and committed."""
    from moodwire.bench.peer import Peer, committed_offsets, versions

    group = f"{cfg.consumer_group}-peer"
    peer = Peer(
        scorer.classifier.model,
        scorer.classifier.tokenizer,
        device=device,
        store_url=f"sqlite:///{tmp / 'peer.db'}",
        model_version=scorer.version,
        max_length=cfg.max_length,
        neighbors_k=cfg.neighbors_k,
    )
    peer.warm_up(texts, cfg.batch_size)
    run = peer.consume(
        cfg.kafka_config(),
        cfg.topics.news,
        group_id=group,
        batch_size=cfg.batch_size,
        expected=len(texts),
    )
    log.info("bench_peer", items_per_s=round(run.items_per_s, 1))
    committed = committed_offsets(cfg.kafka_config(), cfg.topics.news, group)
    return {
        "items": run.items,
        "batches": run.batches,
        "batch_size": cfg.batch_size,
        "seconds": round(run.seconds, 2),
        "items_per_s": round(run.items_per_s, 2),
        "stage_seconds": {k: round(v, 2) for k, v in run.stage_seconds.items()},
        "stored_items": peer.store.count_items(),
        "stored_distinct_ids": len(set(peer.store.item_ids())),
        "consumer_group": group,
        # Read back from the broker: after the last batch, each partition's committed
        # offset is the one after the last record the peer read there.
        "committed_offsets": {str(p): o for p, o in committed.items()},
        "committed_all_read": bool(run.positions)
        and all(committed.get(p) == pos for p, pos in run.positions.items()),
        "stages": "poll, pipeline('text-classification', top_k=None), "
        "SentenceTransformer.encode, faiss.IndexFlatIP, Store.write_batch, commit",
        "libraries": versions(),
    }


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {what} did not finish in {timeout_s}s")
        time.sleep(0.05)
