"""``moodwire bench faults``: break the real parts on purpose and count what it cost.

Everything runs for real, as in production: an embedded broker, SQLite and
PostgreSQL stores, ``moodwire worker`` and ``moodwire learner`` as processes,
a model version from the registry. Six parts, each with its figure:

* ``fuzz``: cases per input target (:func:`moodwire.bench.fuzz.all_targets`: the
  file loaders, the message validator into both stores, label and control
  messages); **crashes** (any error outside a target's clean refusals).
* ``worker_kills``: runs of ``items`` items on fresh topics and a fresh store
  (SQLite and PostgreSQL in turn); a worker is SIGKILLed at seeded random
  moments (during start-up or while it scores), restarted, and a last one
  finishes; **lost** (produced but not stored, or stored but never on
  ``news.scored``), **duplicated** (ids twice in the store or on
  ``news.scored``), recovery (restart to the next new item stored).
* ``learner_kills``: a learner with fresh labels due for a retrain, SIGKILLed
  during training or while it writes and promotes its candidate, restarted;
  **violations**: a serving pointer that does not name a verified version, a
  half-written version (directory), a promotion without its audit row or an
  audit row for a promotion the pointer never made, stored labels never
  learned; **lost**: produced labels never stored; recovery (restart to taking
  labels again).
* ``broker_restart``: a worker through a :class:`~moodwire.bench.proxy.ProxiedBroker`
  killed and restarted empty; the items produced after its return, lost or
  duplicated; recovery (broker back to the first of them stored).
* ``db_outage``: a worker on PostgreSQL through a :class:`~moodwire.bench.proxy.TcpProxy`
  that goes down for ``outage_s`` mid-stream; lost, duplicated, whether the same
  process lived through it; recovery (database back to every item stored).
* ``tampered``: a flipped byte, a deleted tokenizer, an extra file, NaN weights,
  a garbage ``serving.json``: each must be refused at worker start (exit code
  not 0, one line on stderr) and at a hot swap (the running worker keeps the
  old version, ``model_swap_refused``); **violations**: served when it should not.

The result is one JSON object (totals ``crashes``, ``lost``, ``duplicated``,
``violations``, ``max_recovery_s``, ``passed``); :func:`table` is the short
summary printed on stderr.

>>> tally = count_delivery(["a", "b", "c"], stored=["a", "b"], scored=["a", "a"])
>>> tally["lost"], tally["lost_in_store"], tally["duplicated_on_scored"]
(2, 1, 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from moodwire.settings import Settings, Topics
from stream.config import KafkaConfig
from stream.origins import Signer

PARTS = ("fuzz", "worker_kills", "learner_kills", "broker_restart", "db_outage", "tampered")
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
VARIANTS = ("flipped_byte", "tokenizer_deleted", "extra_file", "nan_weights", "garbage_pointer")

KILLS_PER_RUN = 10  # worker kills in one run of `items` items before a last worker finishes
STARTUP_KILL_SHARE = 0.2  # kills timed during start-up (model load, group join), not scoring
# A scoring kill waits for a random share of the run's remaining items to be stored (the
# same spread on a fast machine as on a slow one), then up to this long more: any moment of
# the batch in hand (scoring, storing, publishing, committing).
SCORING_KILL_JITTER_S = 0.5
STARTUP_KILL_S = (0.3, 6.0)
BENCH_LABELLER = "labeller:bench"  # the origin the learner trial's labels are signed as
LABELS_PER_TRIAL = 50  # labels produced before each learner trial: one retrain is then due


@dataclass(frozen=True)
class Sizes:
    """How much of each part runs (``--full`` picks :data:`FULL`, else :data:`SHORT`)."""

    fuzz_cases: int  # per target
    kills: int  # worker kills in all, over runs of KILLS_PER_RUN
    items: int  # items per worker-kill run
    learner_kills: int
    broker_restarts: int
    outage_s: float


SHORT = Sizes(fuzz_cases=500, kills=4, items=600, learner_kills=2, broker_restarts=1, outage_s=10.0)
FULL = Sizes(
    fuzz_cases=10_000, kills=100, items=600, learner_kills=30, broker_restarts=3, outage_s=30.0
)


def count_delivery(produced: list[str], stored: list[str], scored: list[str]) -> dict[str, int]:
    """Exactly-once, counted: an item is lost when it is not stored or stored but never
    published; duplicated once for every extra copy in the store or on ``news.scored``."""
    stored_set, scored_set = set(stored), set(scored)
    wanted = set(produced)
    lost_store = len(wanted - stored_set)
    lost_scored = len((wanted & stored_set) - scored_set)
    dup_store = len(stored) - len(stored_set)
    dup_scored = len(scored) - len(scored_set)
    return {
        "produced": len(wanted),
        "stored": len(stored_set & wanted),
        "published": len(scored_set & wanted),
        "lost": lost_store + lost_scored,
        "lost_in_store": lost_store,
        "lost_on_scored": lost_scored,
        "duplicated": dup_store + dup_scored,
        "duplicated_in_store": dup_store,
        "duplicated_on_scored": dup_scored,
    }


# -- plumbing: processes, topics, stores, logs -------------------------------------------


class Processes:
    """``moodwire`` subprocesses started by the bench; :meth:`close` kills any left."""

    def __init__(self) -> None:
        self._live: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moodwire", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._live.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
        """SIGTERM and the exit code (SIGKILL after ``timeout_s``: then -9)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            return proc.returncode

    def close(self) -> None:
        for proc in self._live:
            with contextlib.suppress(OSError):
                self.kill(proc)
        self._live.clear()


def _wait(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
) -> float | None:
    """``time.monotonic()`` when ``predicate`` first held, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(interval_s)


def _events(log: Path, *names: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``log`` whose event is one of ``names``."""
    if not log.is_file():
        return []
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and any(f'"{n}"' in line for n in names):
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("event") in names:
                    out.append(event)
    return out


def _produce(
    kafka: KafkaConfig | str,
    topic: str,
    values: list[bytes],
    keys: list[bytes | None] | None = None,
) -> None:
    from stream.clients import as_kafka, make_producer

    producer = make_producer(as_kafka(kafka), client_id="moodwire-bench-faults")
    try:
        futures = [
            producer.send(topic, key=keys[i] if keys else None, value=value)
            for i, value in enumerate(values)
        ]
        producer.flush(60)
        for future in futures:
            future.get(60)  # every send checked: an item the bench never sent is not "lost"
    finally:
        producer.close(5)


def _produce_items(settings: Settings, items: list[dict[str, Any]]) -> None:
    _produce(
        settings.kafka_config(),
        settings.topics.news,
        [json.dumps(i).encode() for i in items],
        [i["id"].encode() for i in items],
    )


def _read_topic(kafka: KafkaConfig | str, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every record on ``topic`` now (all partitions, from the start)."""
    from kafka import TopicPartition

    from stream.clients import as_kafka, make_reader

    consumer = make_reader(as_kafka(kafka), client_id="moodwire-bench-faults")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s:g} s")
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def _scored_ids(settings: Settings) -> list[str]:
    return [
        json.loads(r.value)["id"]
        for r in _read_topic(settings.kafka_config(), settings.topics.scored)
    ]


def postgresql_reachable(admin_url: str) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            return True
    except Exception:  # noqa: BLE001 - any failure means: not here
        return False
    finally:
        engine.dispose()


@contextlib.contextmanager
def pg_database(
    admin_url: str, *, fast_commits: bool = False, prefix: str = "moodwire_faults"
) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped afterwards.

    ``fast_commits`` turns ``synchronous_commit`` off in it (a throwaway database: a
    commit need not wait for the disk), so that fuzzing writes every case on its own.
    """
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            if fast_commits:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _items(n: int, prefix: str, seed: int) -> list[dict[str, Any]]:
    from stream.synthetic import demo_feed

    return [
        {"id": f"{prefix}{i}", **{k: v for k, v in item.items() if k not in ("id", "meta")}}
        for i, item in enumerate(demo_feed(n, seed=seed))
    ]


def _recovery(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"max_recovery_s": None, "median_recovery_s": None}
    return {
        "max_recovery_s": round(max(values), 2),
        "median_recovery_s": round(statistics.median(values), 2),
    }


# -- the bench ---------------------------------------------------------------------------


@dataclass
class Bench:
    """What every part shares: settings, a work directory, a broker, a serving registry."""

    settings: Settings
    work: Path
    registry: Path
    bootstrap: str
    pg_admin: str | None
    seed: int
    procs: Processes
    say: Callable[[str], None]

    def rng(self, part: str) -> random.Random:
        """A part's own random stream: ``--only`` a part replays its moments exactly."""
        return random.Random(f"{self.seed}:{part}")

    def run_settings(
        self,
        tag: str,
        *,
        store_url: str | None = None,
        registry: Path | None = None,
        bootstrap: str | None = None,
        **changes: Any,
    ) -> Settings:
        """Settings of one run: its own topics, consumer group, data, index and store."""
        suffix = f"{tag.replace('/', '-')}-{uuid.uuid4().hex[:6]}"
        topics = Topics(**{k: f"{v}-{suffix}" for k, v in Topics().model_dump().items()})
        home = self.work / tag
        home.mkdir(parents=True, exist_ok=True)
        return self.settings.with_overrides(
            bootstrap_servers=bootstrap or self.bootstrap,
            data_dir=home,
            registry=registry or self.registry,
            store_url=store_url or f"sqlite:///{(home / 'store.db').resolve()}",
            index_dir=home / "index",
            topics=topics,
            consumer_group=f"faults-{suffix}",
            **changes,
        )

    def env(self, settings: Settings) -> dict[str, str]:
        return {
            **os.environ,
            **settings.to_env(),
            "MOODWIRE_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }

    @contextlib.contextmanager
    def store_url(self, backend: str, tag: str) -> Iterator[str]:
        """A fresh store for one run: a SQLite file, or a PostgreSQL database dropped after."""
        if backend == "postgresql":
            if self.pg_admin is None:
                raise RuntimeError("no PostgreSQL server to create a database on")
            with pg_database(self.pg_admin) as url:
                yield url
        else:
            yield f"sqlite:///{(self.work / tag / 'store.db').resolve()}"


def serving_registry(settings: Settings, given: bool, say: Callable[[str], None]) -> Path:
    """A registry with a proven serving version: the one configured (``given``) when it
    serves, else ``DATA_DIR/bench-faults/registry``, bootstrapped on generated headlines
    (two short epochs, as the test suite's model) when it has none that loads."""
    from learner.errors import ModelLoadError
    from learner.loading import load_version
    from state.registry import Registry, RegistryError

    own = settings.data_dir / "bench-faults" / "registry"
    for root in ([settings.resolved_registry()] if given else []) + [own]:
        registry = Registry(root)
        try:
            version = registry.serving()
            if version is not None:
                load_version(registry, version, device="cpu", max_length=settings.max_length)
                say(f"model: {version} of {root}")
                return root
        except (RegistryError, ModelLoadError) as exc:
            say(f"model: {root} does not serve a proven version ({exc})")
    root = own
    say(f"model: bootstrapping one in {root} (generated headlines, 2 epochs)")
    from learner.classifier import SentimentClassifier
    from learner.data import LabelledText
    from learner.train import TrainConfig, fine_tune
    from stream.synthetic import labelled_headlines

    shutil.rmtree(root, ignore_errors=True)
    clf = SentimentClassifier.from_encoder(device="cpu", max_length=settings.max_length)
    data = [LabelledText(r["text"], r["label"]) for r in labelled_headlines(240, seed=3)]
    fine_tune(
        clf, data, TrainConfig(epochs=2, lr=2e-4, batch_size=16, time_budget_s=600), progress=False
    )
    registry = Registry(root)
    version = registry.write_version(clf.save, {"kind": "bench-faults", "parent": None})
    registry.promote(version)
    return root


def copy_serving(source: Path, root: Path) -> str:
    """A new registry at ``root`` holding only ``source``'s serving version (its files
    copied, never linked: tampering with the copy must not touch the original)."""
    from state.registry import Registry, RegistryError

    version = Registry(source).serving()
    if version is None:
        raise RegistryError(f"no version serves in {source}")
    shutil.copytree(Registry(source).path(version), root / "versions" / version)
    pointer = {"version": version, "history": [version]}
    _write_atomic(root / "serving.json", json.dumps(pointer).encode())
    return version


# -- 1. fuzz -----------------------------------------------------------------------------


def fuzz_part(bench: Bench, cases: int) -> dict[str, Any]:
    """Every fuzz target, ``cases`` each; crashes with their first examples."""
    from moodwire.bench.fuzz import all_targets, fuzz
    from state.store import Store

    with contextlib.ExitStack() as stack:
        stores = [Store(f"sqlite:///{(bench.work / 'fuzz' / 'store.db').resolve()}")]
        if bench.pg_admin is not None:
            stores.append(
                Store(stack.enter_context(pg_database(bench.pg_admin, fast_commits=True)))
            )
        stack.callback(lambda: [s.engine.dispose() for s in stores])
        targets = {}
        for target in all_targets(stores):
            result = fuzz(target, cases, bench.seed)
            bench.say(
                f"fuzz: {target.name:<16} {result.cases} cases, {result.crashes} crashes, "
                f"{result.accepted} accepted, {result.refused} refused ({result.seconds:.1f} s)"
            )
            targets[target.name] = {
                "cases": result.cases,
                "crashes": result.crashes,
                "accepted": result.accepted,
                "refused": result.refused,
                "seconds": result.seconds,
                "slowest_case_s": result.slowest_case_s,
                "kinds": result.kinds,
                "examples": result.examples[:3],
            }
        dialects = [s.dialect for s in stores]
    return {
        "trials": sum(t["cases"] for t in targets.values()),
        "cases_per_target": cases,
        "stores": dialects,
        "crashes": sum(t["crashes"] for t in targets.values()),
        "targets": targets,
    }


# -- 2. worker kills ---------------------------------------------------------------------


def worker_kills(
    bench: Bench,
    kills: int,
    items: int,
    *,
    before_count: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """``kills`` SIGKILLs of ``moodwire worker`` over runs of ``items`` items each.

    ``before_count(store)`` runs on each run's store before it is counted (a seam for
    the bench's own tests: rows deleted there must be reported lost).
    """
    rng = bench.rng("worker_kills")
    backends = ["sqlite", "postgresql"] if bench.pg_admin is not None else ["sqlite"]
    runs: list[dict[str, Any]] = []
    done = 0
    while done < kills and len(runs) < 3 * (kills // KILLS_PER_RUN + 1):
        want = min(KILLS_PER_RUN, kills - done)
        backend = backends[len(runs) % len(backends)]
        run = _worker_run(bench, len(runs), backend, want, items, rng, before_count)
        runs.append(run)
        done += len(run["kills"])
    recoveries = [r for run in runs for r in run["recoveries_s"]]
    phases = Counter(k["phase"] for run in runs for k in run["kills"])
    return {
        "trials": done,
        "runs": len(runs),
        "items_per_run": items,
        "kills_by_phase": dict(phases),
        "lost": sum(r["lost"] for r in runs),
        "duplicated": sum(r["duplicated"] for r in runs),
        "violations": sum(len(r["problems"]) for r in runs),
        **_recovery(recoveries),
        "runs_detail": runs,
    }


def _worker_run(
    bench: Bench,
    number: int,
    backend: str,
    kills_wanted: int,
    n: int,
    rng: random.Random,
    before_count: Callable[[Any], None] | None,
) -> dict[str, Any]:
    from state.store import Store
    from stream.clients import ensure_topics

    tag = f"worker-kills-{number}"
    with bench.store_url(backend, tag) as url:
        settings = bench.run_settings(tag, store_url=url)
        ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
        items = _items(n, f"k{number}-", seed=bench.seed * 1000 + number)
        _produce_items(settings, items)
        store = Store(url)
        env = bench.env(settings)
        logs = bench.work / tag / "logs"
        kills: list[dict[str, Any]] = []
        recoveries: list[float] = []
        problems: list[str] = []
        life = 0
        try:
            while len(kills) < kills_wanted and store.count_items() < n:
                base = store.count_items()
                proc = bench.procs.start(["worker"], env, logs / f"worker-{life}.log")
                started = time.monotonic()
                if rng.random() < STARTUP_KILL_SHARE:
                    time.sleep(rng.uniform(*STARTUP_KILL_S))
                else:
                    first = _wait(lambda b=base: store.count_items() > b, 180)
                    if first is None:
                        problems.append(f"life {life}: nothing stored in 180 s")
                    elif life > 0:
                        recoveries.append(first - started)
                    share = (n - base) / (kills_wanted - len(kills) + 1)
                    goal = min(n - 1, base + rng.uniform(0, 1.5 * share))
                    _wait(lambda g=goal: store.count_items() >= g, 120, 0.02)
                    time.sleep(rng.uniform(0, SCORING_KILL_JITTER_S))
                stored = store.count_items()
                bench.procs.kill(proc)
                kills.append(
                    {
                        "after_s": round(time.monotonic() - started, 2),
                        "phase": "startup" if stored == base else "scoring",
                        "stored_before": base,  # this life began with work left
                        "stored": stored,
                    }
                )
                life += 1
            # The last worker finishes the run: it joins the group and reads to the end,
            # even when the killed ones stored and published everything.
            base = store.count_items()
            last_log = logs / f"worker-{life}.log"
            proc = bench.procs.start(["worker"], env, last_log)
            started = time.monotonic()
            if base < n:
                first = _wait(lambda b=base: store.count_items() > b, 180)
                if first is not None and life > 0:
                    recoveries.append(first - started)
            finished = _wait(
                lambda: (
                    store.count_items() >= n
                    and store.stats()["unpublished"] == 0
                    and bool(_events(last_log, "partitions_assigned"))
                ),
                180 + n / 2,
                interval_s=0.25,
            )
            if finished is None:
                problems.append("the last worker did not store and publish every item in time")
            time.sleep(1.5)  # anything extra (a duplicate publication) would show now
            code = bench.procs.stop(proc)
            if code != 0:
                problems.append(f"the last worker exited with {code} on SIGTERM")
            if before_count is not None:
                before_count(store)
            tally = count_delivery(
                [i["id"] for i in items], store.item_ids(), _scored_ids(settings)
            )
        finally:
            store.engine.dispose()
    bench.say(
        f"worker_kills: run {number} ({backend}): {len(kills)} kills, "
        f"lost {tally['lost']}, duplicated {tally['duplicated']}, "
        f"longest recovery {max(recoveries, default=0):.1f} s"
    )
    return {
        "run": number,
        "store": backend,
        "kills": kills,
        "recoveries_s": [round(r, 2) for r in recoveries],
        "problems": problems,
        **tally,
    }


# -- 3. learner kills --------------------------------------------------------------------

_DECISIONS = ("model_promoted", "candidate_rejected", "candidate_awaiting_approval",
              "model_promotion_failed")  # fmt: skip


@dataclass
class _LearnerTrial:
    """What one learner kill did and what the restarted learner found."""

    aim: str  # where the kill was aimed: "training" or "promotion"
    landed: str = ""  # where it landed, seen from the log and the registry afterwards
    after_s: float = 0.0  # from retrain_started to the kill
    recovery_s: float | None = None  # restart to learner_active
    resumed_s: float | None = None  # restart to the decision of the resumed retrain
    decision: str | None = None


class _LearnerRig:
    """One ``moodwire learner`` on its own registry copy, store and topics, with labels
    to feed it and the moments of its retrains read from its log."""

    def __init__(self, bench: Bench, kills: int) -> None:
        from learner.data import LabelledText
        from moodwire.processes.learner import seed_memory
        from state.registry import Registry
        from state.store import Store
        from stream.clients import ensure_topics
        from stream.synthetic import demo_feed, labelled_headlines

        self.bench = bench
        tag = "learner-kills"
        root = bench.work / tag / "registry"
        copy_serving(bench.registry, root)
        config = dataclasses.replace(
            bench.settings.learner,
            min_new_labels=30,
            min_holdout=8,
            retrain_every=LABELS_PER_TRIAL,
            epochs=1.0,
            time_budget_s=60.0,
            lr=2e-4,
            max_fresh=200,  # a rejected candidate's labels stay fresh: bound each retrain
            require_approval=False,
            label_origins=(BENCH_LABELLER,),  # the labels below are signed as this origin
        )
        key = SecretStr(secrets.token_urlsafe(32))
        origins = {**bench.settings.origins, BENCH_LABELLER: key}
        self.labeller = Signer(BENCH_LABELLER, key)
        self.settings = bench.run_settings(tag, registry=root, learner=config, origins=origins)
        s = self.settings
        ensure_topics(s.kafka_config(), s.topics.all(), s.partitions)
        old = [LabelledText(r["text"], r["label"]) for r in labelled_headlines(300, seed=11)]
        seed_memory(s, old[:200], old[200:])  # what the bootstrapped model knows
        feed = demo_feed(4 * LABELS_PER_TRIAL * (kills + 1), seed=21, drift_at=0.0)
        self.chatter = [i for i in feed if i["meta"]["phase"] == "chatter"]
        self.registry = Registry(root)
        self.initial_history = len(self.registry.history())
        self.store = Store(s.resolved_store_url())
        self.env = bench.env(s)
        self.logs = bench.work / tag / "logs"
        self.produced: list[str] = []  # label ids
        self.verified: set[str] = set()
        self.lives = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.logs / "none.log"

    def count(self, *events: str) -> int:
        return len(_events(self.log, *events))

    def produce_labels(self, batch: int) -> None:
        from stream.schemas import LabelMessage, label_id

        values = []
        chunk = self.chatter[batch * LABELS_PER_TRIAL : (batch + 1) * LABELS_PER_TRIAL]
        for j, item in enumerate(chunk):
            value = self.labeller.sign_json(
                {
                    "text": item["text"],
                    "label": item["meta"]["true_label"],
                    "source": "bench-faults",
                    "annotator": "bench",
                    "ts": f"2026-03-02T{9 + batch // 60:02d}:{batch % 60:02d}:{j:02d}+00:00",
                }
            )
            self.produced.append(label_id(LabelMessage.model_validate_json(value)))
            values.append(value)
        _produce(self.settings.kafka_config(), self.settings.topics.labels, values)

    def start(self, trial: _LearnerTrial | None, problems: dict[str, str]) -> None:
        """Start a learner; wait until it is active and has decided a retrain it resumed."""
        self.log = self.logs / f"learner-{self.lives}.log"
        self.lives += 1
        self.proc = self.bench.procs.start(["learner"], self.env, self.log)
        started = time.monotonic()
        active = _wait(lambda: self.count("learner_active") > 0, 120, 0.1)
        if active is None:
            problems["learner_start"] = f"a learner was not active in 120 s ({self.log.name})"
            return
        if trial is not None:
            trial.recovery_s = round(active - started, 2)
        # A retrain killed before its attempt was saved is due again at once.
        if _wait(lambda: self.count("retrain_started") > 0, 8, 0.1) is None:
            return
        decided = _wait(lambda: self.count(*_DECISIONS) > 0, 300, 0.1)
        if decided is None:
            problems["learner_decision"] = f"a resumed retrain undecided in 300 s ({self.log.name})"
        elif trial is not None:
            trial.resumed_s = round(decided - started, 2)
            trial.decision = _events(self.log, *_DECISIONS)[-1]["event"]

    def retrain_seconds(self) -> list[float]:
        """How long each retrain this learner finished took, from its log's timestamps."""
        from datetime import datetime

        out, began = [], None
        for event in _events(self.log, "retrain_started", *_DECISIONS):
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            if event["event"] == "retrain_started":
                began = at
            elif began is not None:
                out.append((at - began).total_seconds())
                began = None
        return out

    def time_retrain(self, batch: int) -> tuple[float, float] | None:
        """Feed a batch and let its retrain run: seconds from retrain_started to the
        candidate's directory appearing, and from there to the decision."""
        begun, decided, left = (
            self.count("retrain_started"),
            self.count(*_DECISIONS),
            _incoming(self.registry),
        )
        self.produce_labels(batch)
        started = _wait(lambda: self.count("retrain_started") > begun, 120, 0.02)
        writing = _wait(
            lambda: bool(_incoming(self.registry) - left) or self.count(*_DECISIONS) > decided,
            300,
            0.005,
        )
        done = _wait(lambda: self.count(*_DECISIONS) > decided, 300, 0.02)
        if started is None or writing is None or done is None:
            return None
        return writing - started, done - writing

    def kill_in_retrain(
        self, trial: _LearnerTrial, batch: int, rng: random.Random, train_s: float, write_s: float
    ) -> bool:
        """Feed a batch, wait for its retrain, SIGKILL the learner where ``trial.aim`` says."""
        if self.proc is None:
            raise RuntimeError("no learner runs")
        begun, decided = self.count("retrain_started"), self.count(*_DECISIONS)
        versions = {v.name for v in self.registry.versions()}
        left = _incoming(self.registry)
        self.produce_labels(batch)
        started = _wait(lambda: self.count("retrain_started") > begun, 120, 0.02)
        if started is None:
            return False
        if trial.aim == "training":
            time.sleep(rng.uniform(0.0, 0.9 * train_s))
        else:  # from the moment the candidate is being written: writing, smoke, audit, switch
            _wait(
                lambda: bool(_incoming(self.registry) - left) or self.count(*_DECISIONS) > decided,
                300,
                0.005,
            )
            time.sleep(rng.uniform(0.0, 1.2 * write_s))
        trial.after_s = round(time.monotonic() - started, 2)
        self.bench.procs.kill(self.proc)
        if self.count(*_DECISIONS) > decided:
            trial.landed = "after_decision"
        elif {v.name for v in self.registry.versions()} - versions:
            trial.landed = "promotion"  # renamed into place: smoke batch, audit, pointer switch
        elif _incoming(self.registry) - left:
            trial.landed = "writing"
        else:
            trial.landed = "training"
        return True


def learner_kills(bench: Bench, kills: int) -> dict[str, Any]:
    """SIGKILL a learner ``kills`` times in a retrain, restart it, check what it left."""
    rng = bench.rng("learner_kills")
    rig = _LearnerRig(bench, kills)
    problems: dict[str, str] = {}  # one entry per distinct violation
    trials: list[_LearnerTrial] = []
    timings: dict[str, list[float]] = {"train": [], "write": []}
    try:
        rig.start(None, problems)
        # One retrain left alone: how long training and writing take on this machine.
        timing = rig.time_retrain(0)
        if timing is None:
            problems["learner_calibration"] = "the first retrain was not decided in time"
        else:
            timings["train"].append(timing[0])
            timings["write"].append(timing[1])
        check_learner(rig, problems)
        for number in range(kills):
            trial = _LearnerTrial(aim="training" if number % 2 == 0 else "promotion")
            # The machine's load moves training time a lot: aim with the latest retrains.
            write_s = statistics.median(timings["write"] or [0.5])
            train_s = max(0.2, statistics.median(timings["train"][-5:] or [5.0]))
            if not rig.kill_in_retrain(trial, number + 1, rng, train_s, write_s):
                problems[f"trial_{number}"] = "no retrain started after fresh labels in 120 s"
                continue
            rig.start(trial, problems)
            trials.append(trial)
            timings["train"].extend(t - write_s for t in rig.retrain_seconds())
            check_learner(rig, problems)
            bench.say(
                f"learner_kills: {number + 1}/{kills}: aimed at {trial.aim}, landed in "
                f"{trial.landed} {trial.after_s:.2f} s into the retrain; active again in "
                f"{trial.recovery_s} s; {len(problems)} violations so far"
            )
        labels_lost, unlearned = _labels_lost_or_unlearned(rig.settings, rig.store, rig.produced)
        if unlearned:
            problems["labels_unlearned"] = f"{unlearned} stored labels never learned"
        if rig.proc is not None:
            code = bench.procs.stop(rig.proc)
            if code != 0:
                problems["learner_exit"] = f"the learner exited with {code} on SIGTERM"
    finally:
        rig.store.engine.dispose()
    return {
        "trials": len(trials),
        "kills_by_aim": dict(Counter(t.aim for t in trials)),
        "kills_by_landing": dict(Counter(t.landed for t in trials)),
        "resumed_decisions": dict(Counter(t.decision for t in trials if t.decision)),
        "versions_written": len(rig.registry.versions()) - 1,
        "labels_produced": len(rig.produced),
        "lost": labels_lost,
        "violations": len(problems),
        "problems": sorted(problems.values()),
        "retrain_timing_s": {k: [round(x, 2) for x in v] for k, v in timings.items()},
        **_recovery([t.recovery_s for t in trials if t.recovery_s is not None]),
        "max_resumed_s": max((t.resumed_s for t in trials if t.resumed_s), default=None),
        "trials_detail": [dataclasses.asdict(t) for t in trials],
    }


def _incoming(registry: Any) -> set[Path]:
    """Version directories being written (or left half-written by a writer that died)."""
    versions = registry.root / "versions"
    return set(versions.glob(".incoming-*")) if versions.is_dir() else set()


def check_learner(rig: _LearnerRig, problems: dict[str, str]) -> None:
    """After a learner died anywhere in a retrain: a proven version serves, no version is
    half-written, and the pointer's history and the audit log tell the same promotions."""
    from state.registry import RegistryError

    registry, store, verified = rig.registry, rig.store, rig.verified

    try:
        serving = registry.serving()
        if serving is None:
            problems["pointer_empty"] = "nothing serves"
        else:
            registry.verify(serving)
    except RegistryError as exc:
        problems[f"pointer:{exc}"] = f"serving pointer: {exc}"
    for version in registry.versions():
        if version.name in verified:
            continue
        try:
            registry.verify(version.name)
            verified.add(version.name)
        except RegistryError as exc:
            problems[f"half:{version.name}"] = f"half-written version {version.name}: {exc}"
    for path in _incoming(registry):
        problems[f"incoming:{path.name}"] = (
            f"half-written version directory left behind: {path.name} "
            f"({sum(f.stat().st_size for f in path.rglob('*') if f.is_file())} bytes)"
        )
    try:
        history = registry.history()[rig.initial_history :]
    except RegistryError:
        return
    audited = [r["target"] for r in store.audit_rows(action="promote", limit=100_000)]
    for version in sorted(set(history) - set(audited)):
        problems[f"unaudited:{version}"] = f"promotion to {version} has no audit row"
    for version in sorted(set(audited) - set(history)):
        problems[f"phantom:{version}"] = f"audit row claims a promotion to {version} never made"


def _labels_lost_or_unlearned(
    settings: Settings, store: Any, produced: list[str]
) -> tuple[int, int]:
    """Produced labels that never reached the store, and stored ones the learner never
    learned (waited for a while: the learner may still be catching up)."""
    from moodwire.processes.learner import learner_dir

    def state() -> dict[str, Any]:
        path = learner_dir(settings) / "state.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def rows() -> list[dict[str, Any]]:
        return store.labels_after(0, limit=1_000_000)

    _wait(lambda: {r["id"] for r in rows()} >= set(produced), 60, 0.5)
    _wait(
        lambda: state().get("label_seq", 0) >= max((r["seq"] for r in rows()), default=0), 60, 0.5
    )
    stored = rows()
    missing = set(produced) - {r["id"] for r in stored}
    learned_to = state().get("label_seq", 0)
    return len(missing), sum(1 for r in stored if r["seq"] > learned_to)


# -- 4. broker restart -------------------------------------------------------------------


def broker_restart(bench: Bench, restarts: int) -> dict[str, Any]:
    """A worker through a proxied broker that is SIGKILLed and comes back empty."""
    from moodwire.bench.proxy import ProxiedBroker
    from state.store import Store
    from stream.clients import ensure_topics

    rng = bench.rng("broker_restart")
    tag = "broker-restart"
    (bench.work / tag).mkdir(parents=True, exist_ok=True)
    trials: list[dict[str, Any]] = []
    problems: list[str] = []
    with ProxiedBroker(log_path=bench.work / tag / "broker.log") as broker:
        settings = bench.run_settings(tag, bootstrap=broker.bootstrap_servers)
        ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
        store = Store(settings.resolved_store_url())
        before = _items(80, "br-before-", seed=bench.seed + 14)
        _produce_items(settings, before)
        proc = bench.procs.start(["worker"], bench.env(settings), bench.work / tag / "worker.log")
        try:
            if _wait(lambda: store.count_items() >= len(before), 180) is None:
                problems.append("the items before the first restart were not stored in 180 s")
            for number in range(restarts):
                broker.kill()
                time.sleep(rng.uniform(1.0, 5.0))
                broker.restart()  # empty: no topics, no committed offsets
                back = time.monotonic()
                ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
                after = _items(120, f"br-{number}-", seed=bench.seed + 15 + number)
                _produce_items(settings, after)
                ids = [i["id"] for i in after]

                def stored_any(ids: list[str] = ids) -> bool:
                    return bool(store.items_by_ids(ids[:50]))

                first = _wait(stored_any, 240, 0.1)
                done = _wait(
                    lambda ids=ids: (
                        len(store.items_by_ids(ids)) == len(ids)
                        and store.stats()["unpublished"] == 0
                    ),
                    240,
                    0.25,
                )
                time.sleep(1.0)
                stored = [i for i in store.item_ids() if i in set(ids)]
                scored = [i for i in _scored_ids(settings) if i in set(ids)]
                tally = count_delivery(ids, stored, scored)
                trial = {
                    "recovery_s": round(first - back, 2) if first is not None else None,
                    "all_stored_s": round(done - back, 2) if done is not None else None,
                    **tally,
                }
                trials.append(trial)
                bench.say(
                    f"broker_restart: {number + 1}/{restarts}: lost {tally['lost']}, "
                    f"duplicated {tally['duplicated']}, first item stored "
                    f"{trial['recovery_s']} s after the broker came back"
                )
                if proc.poll() is not None:
                    problems.append(f"the worker died (exit {proc.returncode})")
                    break
            lost_before = len({i["id"] for i in before} - set(store.item_ids()))
            alive = proc.poll() is None
            code = bench.procs.stop(proc)
            if alive and code != 0:
                problems.append(f"the worker exited with {code} on SIGTERM")
        finally:
            store.engine.dispose()
    return {
        "trials": len(trials),
        "worker_survived": not any("died" in p for p in problems),
        "lost": lost_before + sum(t["lost"] for t in trials),
        "duplicated": sum(t["duplicated"] for t in trials),
        "violations": len(problems),
        "problems": problems,
        **_recovery([t["recovery_s"] for t in trials if t["recovery_s"] is not None]),
        "trials_detail": trials,
    }


# -- 5. database outage ------------------------------------------------------------------


def db_outage(bench: Bench, outage_s: float, items: int) -> dict[str, Any]:
    """PostgreSQL taken away for ``outage_s`` under a running worker, then given back."""
    from sqlalchemy.engine import make_url

    from moodwire.bench.proxy import TcpProxy
    from state.store import Store
    from stream.clients import ensure_topics

    if bench.pg_admin is None:
        return {"trials": 0, "skipped": "PostgreSQL is not reachable"}
    tag = "db-outage"
    problems: list[str] = []
    with bench.store_url("postgresql", tag) as url:
        server = make_url(url)
        store = Store(url)  # the bench's own view: straight to the server, never cut
        with TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy:
            host, port = proxy.address.rsplit(":", 1)
            cut = server.set(host=host, port=int(port)).render_as_string(hide_password=False)
            settings = bench.run_settings(tag, store_url=cut)
            ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
            feed = _items(items, "db-", seed=bench.seed + 13)
            log = bench.work / tag / "worker.log"
            proc = bench.procs.start(["worker"], bench.env(settings), log)
            sent: list[str] = []  # ids the broker acknowledged: what may be lost

            def feeder() -> None:  # a live feed: 50 items a second, through the outage
                try:
                    for i in range(0, len(feed), 50):
                        _produce_items(settings, feed[i : i + 50])
                        sent.extend(item["id"] for item in feed[i : i + 50])
                        time.sleep(1.0)
                except Exception as exc:  # noqa: BLE001 - reported, and counted by what was sent
                    problems.append(f"the feed failed: {type(exc).__name__}: {exc}"[:300])

            thread = threading.Thread(target=feeder, daemon=True)
            try:
                thread.start()
                if _wait(lambda: store.count_items() >= items // 4, 180) is None:
                    problems.append(f"{items // 4} items were not stored in 180 s")
                at_down = store.count_items()
                proxy.go_down()
                down = time.monotonic()
                died = _wait(lambda: proc.poll() is not None, outage_s, 0.25)
                if died is not None:
                    problems.append(f"the worker died during the outage (exit {proc.returncode})")
                proxy.come_back()
                back = time.monotonic()
                first = _wait(lambda: store.count_items() > at_down, 300, 0.1)
                thread.join(120)
                done = _wait(
                    lambda: store.count_items() >= len(sent) and store.stats()["unpublished"] == 0,
                    300 + items / 2,
                    0.25,
                )
                time.sleep(1.0)
                alive = proc.poll() is None
                if not alive and died is None:
                    problems.append(f"the worker died after the outage (exit {proc.returncode})")
                code = bench.procs.stop(proc)
                if alive and code != 0:
                    problems.append(f"the worker exited with {code} on SIGTERM")
                tally = count_delivery(sent, store.item_ids(), _scored_ids(settings))
            finally:
                store.engine.dispose()
    seen = [e for e in _events(log, "dependency_recovered") if e.get("dependency") == "store"]
    result = {
        "trials": 1,
        "outage_s": round(back - down, 2),
        "stored_when_cut": at_down,
        "worker_survived": not any("died" in p for p in problems),
        "outage_seen_by_worker_s": seen[-1].get("outage_s") if seen else None,
        "first_stored_after_s": round(first - back, 2) if first is not None else None,
        "recovery_s": round(done - back, 2) if done is not None else None,
        "max_recovery_s": round(done - back, 2) if done is not None else None,
        "violations": len(problems),
        "problems": problems,
        **tally,
    }
    bench.say(
        f"db_outage: {result['outage_s']} s down; lost {tally['lost']}, duplicated "
        f"{tally['duplicated']}; every item stored {result['recovery_s']} s after it came back"
    )
    return result


# -- 6. tampered versions ----------------------------------------------------------------


def _force_pointer(registry: Any, version: str) -> None:
    """What someone with write access to the registry can do: point at a version directly
    (``Registry.promote`` itself refuses a tampered version)."""
    state = json.loads(registry.serving_file.read_text())
    state = {**state, "version": version, "history": [*state.get("history", []), version]}
    _write_atomic(registry.serving_file, json.dumps(state).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_bytes(data)
    tmp.replace(path)


def make_tampered(registry: Any, variant: str, good: str) -> str | None:
    """Write a tampered copy of version ``good`` (or a garbage pointer) and point the
    registry at it; the version the pointer now names (None for the garbage pointer)."""
    import torch

    from learner.classifier import SentimentClassifier

    if variant == "garbage_pointer":
        _write_atomic(registry.serving_file, b'{"version": "' + good.encode() + b'", "history": "')
        return None
    if variant == "nan_weights":  # a real version, checksums and all, of NaN tensors
        clf = SentimentClassifier.from_pretrained(registry.path(good), device="cpu")
        with torch.no_grad():
            clf.model.classifier.weight.fill_(float("nan"))
        version = registry.write_version(clf.save, {"kind": "bench-faults", "parent": good})
    else:
        source = registry.path(good)
        version = registry.write_version(
            lambda d: shutil.copytree(
                source, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("card.json")
            ),
            {"kind": "bench-faults", "parent": good},
        )
        path = registry.path(version)
        if variant == "flipped_byte":
            weights = path / "model.safetensors"
            weights.chmod(0o644)
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0x10  # past the header: it still loads, and serves garbage
            weights.write_bytes(bytes(data))
        elif variant == "tokenizer_deleted":
            (path / "tokenizer.json").unlink()
        elif variant == "extra_file":
            path.chmod(0o755)
            (path / "pytorch_model.bin").write_bytes(b"a pickle would go here")
        else:
            raise ValueError(f"unknown variant {variant!r}")
    _force_pointer(registry, version)
    return version


def tampered(bench: Bench, variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """Each variant refused at worker start and at a hot swap under a running worker."""
    tag = "tampered"
    results: dict[str, dict[str, Any]] = {v: {} for v in variants}
    for variant in variants:
        results[variant]["at_start"] = _refused_at_start(bench, tag, variant)
    swaps = _refused_at_swap(bench, tag, variants)
    for variant, outcome in swaps.items():
        results[variant]["at_swap"] = outcome
    served = sum(
        int(r["at_start"]["served"]) + int(r["at_swap"]["served"]) for r in results.values()
    )
    # Refused, but not as promised: more than one line, no log event, or scoring stopped.
    unclear = sum(
        int(not r["at_start"]["one_line"])
        + int(not r["at_swap"]["logged"])
        + int(not r["at_swap"]["kept_serving"])
        for r in results.values()
    )
    return {
        "trials": 2 * len(variants),
        "served_when_it_should_not": served,
        "violations": served + unclear,
        "max_recovery_s": None,
        "variants": results,
    }


def _refused_at_start(bench: Bench, tag: str, variant: str) -> dict[str, Any]:
    """``moodwire worker`` on a registry whose serving version is tampered: it must exit
    non-zero with one line on stderr, and score nothing (items wait on its topic)."""
    from state.registry import Registry
    from state.store import Store
    from stream.clients import ensure_topics

    home = bench.work / tag / f"start-{variant}"
    root = home / "registry"
    good = copy_serving(bench.registry, root)
    registry = Registry(root)
    version = make_tampered(registry, variant, good)
    settings = bench.run_settings(f"{tag}/start-{variant}", registry=root)
    ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
    _produce_items(settings, _items(10, f"t-{variant}-", seed=bench.seed + 16))
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "moodwire", "worker"],
            env=bench.env(settings),
            capture_output=True,
            text=True,
            timeout=180,
        )
        code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:  # it ran on: it served, or hung
        raw = exc.stderr or ""
        code, stderr = None, raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    store = Store(settings.resolved_store_url())
    scored = store.count_items()
    store.engine.dispose()
    served = code in (0, None) or scored > 0
    one_line = len(lines) == 1 and "Traceback" not in stderr
    outcome = {
        "version": version,
        "exit_code": code,
        "stderr": lines[0][:300] if len(lines) == 1 else "\n".join(lines)[-600:],
        "one_line": one_line,
        "served": served,
        "items_scored": scored,
        "seconds": round(time.monotonic() - began, 2),
    }
    bench.say(
        f"tampered: {variant} at start: exit {code}, "
        f"{'one line' if one_line else f'{len(lines)} lines'} on stderr"
        + ("; SERVED" if served else "")
    )
    shutil.rmtree(root, ignore_errors=True)  # a copy of the model: big, and proven now
    return outcome


def _refused_at_swap(bench: Bench, tag: str, variants: tuple[str, ...]) -> dict[str, dict]:
    """One worker serving the good version; each variant is pointed at under it in turn
    (then the pointer is put back): refused, logged, and the old version scores on."""
    from state.registry import Registry
    from state.store import Store
    from stream.clients import ensure_topics

    home = bench.work / tag / "swap"
    root = home / "registry"
    good = copy_serving(bench.registry, root)
    registry = Registry(root)
    saved = registry.pointer_state()
    settings = bench.run_settings(f"{tag}/swap", registry=root)
    ensure_topics(settings.kafka_config(), settings.topics.all(), settings.partitions)
    store = Store(settings.resolved_store_url())
    log = home / "worker.log"
    proc = bench.procs.start(["worker"], bench.env(settings), log)
    out: dict[str, dict] = {}
    try:
        first = _items(20, "swap-first-", seed=bench.seed + 17)
        _produce_items(settings, first)
        expected = len(first)
        if _wait(lambda: store.count_items() >= expected or proc.poll() is not None, 180) is None:
            raise TimeoutError("the hot-swap worker stored nothing in 180 s")
        if proc.poll() is not None:
            raise RuntimeError(f"the hot-swap worker exited with {proc.returncode}; see {log}")
        served_before = 0  # items scored by anything but the good version so far
        for number, variant in enumerate(variants):
            refusals = len(_events(log, "model_swap_refused"))
            changed = time.monotonic()
            version = make_tampered(registry, variant, good)
            logged = _wait(lambda r=refusals: len(_events(log, "model_swap_refused")) > r, 60, 0.1)
            batch = _items(20, f"swap-{variant}-", seed=bench.seed + 18 + number)
            _produce_items(settings, batch)
            expected += len(batch)
            kept = _wait(lambda e=expected: store.count_items() >= e, 120) is not None
            by_version = store.stats()["by_model_version"]
            served = sum(n for v, n in by_version.items() if v != good) - served_before
            served_before += served
            refusal = _events(log, "model_swap_refused")[-1] if logged else {}
            out[variant] = {
                "version": version,
                "logged": logged is not None,
                "refused_in_s": round(logged - changed, 2) if logged is not None else None,
                "reason": str(refusal.get("reason", ""))[:300],
                "served": served > 0,
                "items_scored_by_it": served,
                "kept_serving": kept and proc.poll() is None,  # the old version, on new items
            }
            bench.say(
                f"tampered: {variant} at a hot swap: "
                f"{'refused' if logged else 'NOT refused'}, {served} items scored by it"
            )
            registry.restore(saved)  # the good version again, for the next variant
            time.sleep(0.5)
        code = bench.procs.stop(proc)
        if code != 0:
            for outcome in out.values():
                outcome["worker_exit"] = code
    finally:
        store.engine.dispose()
    return out


# -- the whole run -----------------------------------------------------------------------


def run_faults(
    settings: Settings,
    *,
    sizes: Sizes,
    parts: tuple[str, ...] = PARTS,
    seed: int = 0,
    registry_given: bool = False,
    pg_admin: str | None = PG_ADMIN_URL,
    keep_work: bool = False,
    full: bool = False,
) -> dict[str, Any]:
    """Run ``parts`` at ``sizes``; the result JSON (``passed`` when every figure is 0)."""
    from stream.broker import EmbeddedBroker, free_port

    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[faults {time.monotonic() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    if pg_admin is not None and not postgresql_reachable(pg_admin):
        say(f"PostgreSQL is not reachable at {pg_admin}: SQLite only, no database outage")
        pg_admin = None
    home = settings.data_dir / "bench-faults"
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=home))
    needs_model = set(parts) - {"fuzz"}
    registry = serving_registry(settings, registry_given, say) if needs_model else home / "none"
    procs = Processes()
    results: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            bootstrap = ""  # fuzzing needs no broker
            if needs_model:
                broker = EmbeddedBroker(port=free_port(), log_path=work / "broker.log")
                bootstrap = stack.enter_context(broker).bootstrap_servers
            bench = Bench(settings, work, registry, bootstrap, pg_admin, seed, procs, say)
            runners: dict[str, Callable[[], dict[str, Any]]] = {
                "fuzz": lambda: fuzz_part(bench, sizes.fuzz_cases),
                "worker_kills": lambda: worker_kills(bench, sizes.kills, sizes.items),
                "learner_kills": lambda: learner_kills(bench, sizes.learner_kills),
                "broker_restart": lambda: broker_restart(bench, sizes.broker_restarts),
                "db_outage": lambda: db_outage(bench, sizes.outage_s, sizes.items),
                "tampered": lambda: tampered(bench),
            }
            for part in PARTS:
                if part not in parts:
                    continue
                say(f"{part}: starting")
                began = time.monotonic()
                try:
                    results[part] = runners[part]()
                except Exception as exc:  # noqa: BLE001 - a part that breaks is a finding, not the end
                    say(f"{part}: FAILED: {type(exc).__name__}: {exc}")
                    results[part] = {
                        "error": f"{type(exc).__name__}: {exc}"[:1000],
                        "traceback": traceback.format_exc()[-3000:],
                    }
                finally:
                    procs.close()
                results[part]["seconds"] = round(time.monotonic() - began, 1)
    finally:
        procs.close()
    result = summarise(results)
    result.update(
        {
            "full": full,
            "seed": seed,
            "sizes": dataclasses.asdict(sizes),
            "stores": ["sqlite", "postgresql"] if pg_admin else ["sqlite"],
            "model_registry": str(registry) if needs_model else None,
            "wall_s": round(time.monotonic() - t0, 1),
        }
    )
    if result["passed"] and not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        result["work_dir"] = str(work)
        say(f"logs and stores kept in {work}")
    return result


def summarise(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals over the parts; ``passed`` when there are no crashes, losses, duplicates,
    violations or broken parts."""
    totals = {
        key: sum(int(p.get(key) or 0) for p in parts.values())
        for key in ("crashes", "lost", "duplicated", "violations")
    }
    errors = sum(1 for p in parts.values() if "error" in p)
    recoveries = [
        p["max_recovery_s"] for p in parts.values() if p.get("max_recovery_s") is not None
    ]
    return {
        "bench": "faults",
        **totals,
        "errors": errors,
        "max_recovery_s": max(recoveries, default=None),
        "passed": not errors and not any(totals.values()),
        "parts": parts,
    }


def table(result: dict[str, Any]) -> str:
    """One aligned line per part: cases or trials, crashes/lost/dup, violations, recovery."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    head = ("part", "trials", "crashes", "lost", "dup", "violations", "max_recovery_s")
    rows = [head]
    for name, part in result["parts"].items():
        if "error" in part:
            rows.append((name, "ERROR", "-", "-", "-", "-", part["error"][:60]))
            continue
        rows.append(
            (
                name,
                cell(part.get("trials")),
                cell(part.get("crashes") if name == "fuzz" else None),
                cell(part.get("lost")),
                cell(part.get("duplicated")),
                cell(part.get("violations") if name != "fuzz" else None),
                cell(part.get("max_recovery_s")),
            )
        )
    verdict = "PASSED" if result["passed"] else "FAILED"
    rows.append(
        (
            "total",
            "",
            cell(result["crashes"]),
            cell(result["lost"]),
            cell(result["duplicated"]),
            cell(result["violations"]),
            f"{cell(result['max_recovery_s'])}  {verdict} in {result.get('wall_s', 0):.0f} s",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return "\n".join(
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:6], widths[1:], strict=True)]
        )
        + "  "
        + row[6]
        for row in rows
    )
