"""The ``moodwire learner`` process: labels → drift → replay fine-tune → gates → promotion.

Wiring around :class:`~learner.continual.ContinualLearner`:

* **One active learner.** A lock (:mod:`moodwire.processes.leader`): a
  PostgreSQL advisory lock when the store or the shared registry is there
  (learners on several hosts), else an exclusive ``flock`` on
  ``REGISTRY/.learner.lock``. A second instance waits on standby (``/readyz``
  says ``role: standby``) and takes over when the first dies (the database or
  the kernel releases a dead holder's lock). The standby consumes nothing.
* **Labels in.** One consumer in group ``<consumer_group>-learner`` reads
  ``news.labels`` and ``moodwire.control``. Labels are stored idempotently
  (``labels`` table, joined to the scored items by id) before offsets are
  committed; a label for an item not yet scored waits until the item is stored.
* **State survives restarts.** The replay buffer and the fresh-label pools are
  written atomically to ``DATA_DIR/learner/`` after every change; the registry
  is only written by :meth:`Registry.write_version` (temporary directory,
  atomic rename), so a learner killed mid-training leaves the serving version
  and the registry as they were.
* **Decisions are audited.** Every candidate becomes an immutable version whose
  card holds its training report, gates and decision; promotion switches
  ``serving.json``, is announced on ``moodwire.control`` and written to the
  audit log (who: ``learner``, why: the trigger, metrics: the gates).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from kafka import KafkaProducer
from prometheus_client import Counter, Gauge
from sqlalchemy.exc import SQLAlchemyError

from learner import replay as replay_store
from learner.classifier import SentimentClassifier
from learner.continual import ContinualLearner, Outcome, make_replay
from learner.data import LabelledText
from learner.drift import DriftEvent
from learner.errors import MemoryFileError, ModelLoadError
from learner.loading import load_version, smoke_check
from learner.replay import Reservoir
from learner.runtime import save_version
from moodwire.settings import Settings
from state.registry import Registry, RegistryError
from state.store import Store
from stream.deadletter import dlq_message, rejection_row
from stream.health import serve_health
from stream.masking import Masker
from stream.observability import observe_retrain
from stream.operations import audited_switch, reconcile_serving
from stream.origins import RefusalLog, Refused
from stream.outage import ConsumerKeepalive, Health, Stopping, Waiter
from stream.publish import Outgoing, Publisher
from stream.schemas import ControlMessage, LabelMessage, label_row
from stream.validate import parse_message
from stream.worker import commit_offsets, rewind

log = structlog.get_logger(__name__)

LABELS_IN = Counter("moodwire_labels_total", "Labels stored", ["source"])
REFUSED = Counter(
    "moodwire_refused_total",
    "Labels and commands refused for their origin (unsigned, not allowed, forged, stale)",
    ["kind", "origin", "reason"],
)
CONTROL_IN = Counter("moodwire_control_total", "Commands acted on", ["action", "origin"])
RETRAINS = Counter("moodwire_retrains_total", "Candidates trained", ["decision"])
FRESH = Gauge("moodwire_fresh_labels", "Fresh labels waiting to be learned")

_PENDING_MAX_AGE_S = 3600.0  # a label whose item never arrives is dropped after this (s)


def learner_dir(settings: Settings) -> Path:
    return settings.data_dir / "learner"


def _memories(settings: Settings) -> tuple[Any, Reservoir]:
    cfg = settings.learner
    d = learner_dir(settings)
    replay = replay_store.load(
        d / "replay.json", make_replay(cfg.replay_kind, cfg.replay_capacity, cfg.seed)
    )
    heldout = replay_store.load(d / "heldout.json", Reservoir(cfg.old_holdout_max, cfg.seed + 1))
    return replay, heldout


def _save_memories(settings: Settings, replay: Any, heldout: Reservoir) -> None:
    d = learner_dir(settings)
    if hasattr(replay, "state"):
        replay_store.save(replay, d / "replay.json")
    replay_store.save(heldout, d / "heldout.json")


def seed_memory(
    settings: Settings, trained: list[LabelledText], heldout: list[LabelledText] = ()
) -> int:
    """Give the learner what a bootstrapped model knows: the data it was trained on
    (replayed later) and held-out data it never saw (to measure forgetting on)."""
    replay, held = _memories(settings)
    for item in trained:
        replay.add(item)
    for item in heldout:
        held.add(item)
    _save_memories(settings, replay, held)
    return len(replay) + len(held)


def liveness_s(settings: Settings) -> float:
    """How long ``/healthz`` may go without a beat: the loop does not beat while a candidate
    trains, so the training budget (an hour when unbounded) comes on top of two minutes."""
    budget = settings.learner.time_budget_s
    return 120.0 + (budget if budget is not None else 3600.0)


class LearnerProcess:
    """Consume labels and commands, keep the learner's state, write what it decides."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        consumer: Any,
        producer: KafkaProducer,
        load: Callable[[str], SentimentClassifier],
        *,
        progress: bool = False,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.consumer = consumer
        self.publisher = (
            producer if isinstance(producer, Publisher) else Publisher(lambda: producer)
        )
        self.load = load
        self.progress = progress
        self.health = health or Health("learner")
        self.masker = settings.masker()  # label texts masked as items are
        # Each version written carries its serving export (learner.runtime.save_version).
        self.export = settings.runtime != "torch"
        self.dir = learner_dir(settings)
        self.set_stop(threading.Event())
        version = registry.serving()
        if version is None:
            raise RegistryError(
                f"no model serves in registry {registry.root}: bootstrap one before starting "
                "the learner (`moodwire bootstrap --train FILE`)"
            )
        # Memories and state come from disk in _reload_state.
        self.learner = ContinualLearner(load(version), version, settings.learner, None, None)
        self._refused: tuple[str | None, str] | None = None  # a serving state it would not load
        self._inflight: list[Any] = []  # records polled but not yet committed
        self._reconciled_at = -1e9
        # Who may train the model and command the learner (stream/origins.py).
        self.label_trust = settings.label_trust()
        self.control_trust = settings.control_trust()
        self.signer = settings.signer("learner")
        self.refusals = RefusalLog(log.warning)
        self._seen: dict[str, float] = {}  # signatures of commands taken (replay window)
        self._known_origins = (
            set(self.label_trust.keys) | self.label_trust.allowed | self.control_trust.allowed
        )
        trusted = sorted(self.label_trust.allowed & set(self.label_trust.keys))
        if not trusted:
            log.warning(
                "no_trusted_label_origin",
                allowed=sorted(self.label_trust.allowed),
                keys=sorted(self.label_trust.keys),
                hint="every label from Kafka is refused: put an origin in "
                "MOODWIRE_LEARNER__LABEL_ORIGINS and its key in MOODWIRE_ORIGINS",
            )
        self._reload_state()

    def _reload_state(self) -> None:
        """What the learner knows, as last saved (at start, and after an unexpected error:
        the same as a restart, so nothing half-done in memory is trusted)."""
        self.learner.replay, self.learner.heldout = _memories(self.settings)
        self._label_seq = 0  # every stored label up to this sequence number is learned
        self._learned: set[int] = set()  # learned ones above it (others wait for their item)
        self._awaiting: str | None = None  # a candidate waiting for an operator's approval
        self._waiting = True  # labels in the store may wait for their items (catch up at start)
        self._shift_ts = None  # event time of the last drift the workers saw
        state_file = self.dir / "state.json"
        if not state_file.is_file():
            return
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            self.learner.restore(state.get("learner", {}))
            self._label_seq = int(state.get("label_seq", 0))
            self._learned = {int(q) for q in state.get("learned_above", [])}
            self._awaiting = state.get("awaiting")
            self._shift_ts = _when(state.get("shift_ts"))
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise MemoryFileError(
                f"{state_file}: unreadable learner state ({type(exc).__name__}: "
                f"{str(exc)[:120]}); restore it from a backup, or delete it to start the "
                "learner's fresh pool afresh (the labels stay in the store)"
            ) from exc

    # -- the loop -------------------------------------------------------------------------

    def set_stop(self, stop: threading.Event) -> None:
        """The event that ends :meth:`run` and any wait for a dependency."""
        self.stop = stop
        self.keepalive = ConsumerKeepalive(self.consumer, stop)
        self.waiter = Waiter(
            self.health,
            stop,
            keepalive=self.keepalive,
            after_outage=lambda _dep: self.keepalive.resume(),
            initial_s=self.settings.retry_initial_s,
            max_s=self.settings.retry_max_s,
        )

    def run(self, stop: threading.Event) -> None:
        """Learn until ``stop`` is set; outages are waited out, bad messages dead-lettered."""
        self.set_stop(stop)
        log.info(
            "learner_active",
            serving=self.learner.version,
            replay=len(self.learner.replay),
            fresh=len(self.learner.fresh_train) + len(self.learner.fresh_holdout),
            strategy=self.settings.learner.strategy,
        )
        failures = 0
        while not stop.is_set():
            self.health.beat()
            try:
                self.poll_once(timeout_ms=500)
                self.reconcile()
                self.sync_serving()
                self.retrain_if_due(stop)
            except Stopping:
                break
            except Exception:
                # A bug or an unclassified failure: the polled records were not committed,
                # so read them again after a backoff rather than exit.
                failures += 1
                log.exception("learner_step_failed_retrying", failures=failures)
                self._rewind()
                self._reload_state()
                # The rewound commands come again: not replays (switches are compare-and-swap).
                self._seen.clear()
                backoff = self.settings.retry_initial_s * 2 ** min(failures, 8)
                self.keepalive(min(self.settings.retry_max_s, backoff))
                self.keepalive.resume()
                continue
            failures = 0

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Read labels and commands, store and learn from them, then commit; returns records.

        A message that is not a valid label or command goes to the dead-letter
        topic with its reason; the store and the broker are waited for.
        """
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms)
        except Exception as exc:  # noqa: BLE001 - the broker's problem: wait, try again
            self.health.down("kafka", exc)
            self.stop.wait(2.0)
            return 0
        records = [r for recs in polled.values() for r in recs]
        self._inflight = records
        topics = self.settings.topics
        rows, letters = [], []
        now = datetime.now(UTC)
        for rec in records:
            if rec.topic == topics.control:
                refused = self._on_control(rec)
                if refused is not None:
                    letters.append(_letter(rec, *refused, now, self.masker))
                continue
            try:
                msg = parse_message(LabelMessage, rec.value)
                if msg.item_id is None and not msg.text:
                    raise ValueError("a label needs an item_id or a text")
                if msg.label is None and msg.topic is None:
                    raise ValueError("a label needs a label or a topic")
                # Only an allowed origin's signed labels are trained on or held out.
                self.label_trust.verify(rec.value)
            except Refused as exc:
                self._count_refusal("label", exc, rec)
                letters.append(_letter(rec, "origin", str(exc)[:300], now, self.masker))
                continue
            except ValueError as exc:
                detail = str(exc)[:300] or type(exc).__name__
                detail = self.masker.mask(detail) if self.masker else detail
                log.warning(
                    "label_rejected",
                    error=detail,
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                )
                letters.append(_letter(rec, "schema", detail, now, self.masker))
                continue
            rows.append(label_row(_masked_label(msg, self.masker)))
        fresh = self.waiter.run(lambda: self.store.add_labels(rows), "store") if rows else []
        for row in fresh:
            LABELS_IN.labels(row["source"]).inc()
        if letters:
            self._dead_letter(letters)
        if records:
            commit_offsets(self.consumer, records, self.waiter)
        self._inflight = []
        if fresh or self._waiting:  # otherwise the store holds nothing new to learn
            self.waiter.run(self.learn_stored_labels, "store")
        return len(records)

    def _dead_letter(self, letters: list[dict[str, Any]]) -> None:
        """Store, publish (checked) and flag the dead letters of bad labels or commands."""
        _, _, seqs = self.waiter.run(lambda: self.store.write_batch([], letters), "store")
        if not seqs:
            return
        rows = self.waiter.run(lambda: self.store.rejections_by_seq(seqs), "store")
        dlq = self.settings.topics.dlq
        delivery = self.publisher.deliver([dlq_message(r, dlq) for r in rows], self.waiter)
        sent = [ref[1] for ref in delivery.published if ref[0] == "dlq"]
        self.waiter.run(lambda: self.store.mark_published((), sent), "store")

    def _before_shift(self, ts: datetime | None) -> bool:
        return self._shift_ts is not None and ts is not None and _utc(ts) < self._shift_ts

    def _rewind(self) -> None:
        rewind(self.consumer, self._inflight)
        self._inflight = []

    def learn_stored_labels(self) -> int:
        """Learn from labels in the store not learned yet; returns how many were learned.

        The store, not Kafka, feeds the learner: a learner that dies after a label
        is stored but before it is learned picks it up again on restart. Labels
        whose item is not scored yet wait (at most an hour).
        """
        rows = [
            r for r in self.store.labels_after(self._label_seq) if r["seq"] not in self._learned
        ]
        if not rows:
            self._waiting = False
            return 0
        ids = [r["item_id"] for r in rows if r["item_id"] and not r["text"]]
        known = self.store.items_by_ids(ids) if ids else {}
        now = datetime.now(UTC)
        ready, waiting, before = [], [], []
        for r in rows:
            if r["label"] is None:  # a topic correction: the workers' topic model takes it
                self._learned.add(r["seq"])
                continue
            item = known.get(r["item_id"] or "", {})
            text = r["text"] or item.get("text")
            received = (
                r["received_at"]
                if r["received_at"].tzinfo
                else r["received_at"].replace(tzinfo=UTC)
            )
            if text and self._before_shift(item.get("ts")):
                before.append(LabelledText(text, r["label"]))
                self._learned.add(r["seq"])
            elif text:
                ready.append(LabelledText(text, r["label"]))
                self._learned.add(r["seq"])
            elif (now - received).total_seconds() < _PENDING_MAX_AGE_S:
                waiting.append(r["seq"])
            else:
                log.warning("label_dropped_item_never_seen", item_id=r["item_id"])
                self._learned.add(r["seq"])
        # Everything up to the first waiting label is done; remember only what lies above.
        self._waiting = bool(waiting)
        self._label_seq = (min(waiting) - 1) if waiting else max(r["seq"] for r in rows)
        self._learned = {q for q in self._learned if q > self._label_seq}
        if before:  # late labels of the old world: memory, not the new world's fresh pool
            self.learner.remember(before)
        events = self.learner.observe(ready) if ready else []
        for event in events:
            self._announce_drift(event)
        FRESH.set(len(self.learner.fresh_train) + len(self.learner.fresh_holdout))
        self._save_state(memory=bool(events))  # a drift moved the fresh pool into memory
        return len(ready)

    def _on_control(self, rec: Any) -> tuple[str, str] | None:
        """Act on a command from an allowed, verified origin, audited under that origin;
        ``(reason, detail)`` when it was refused (audited too, and dead-lettered)."""
        try:
            msg = parse_message(ControlMessage, rec.value)
        except ValueError as exc:
            detail = str(exc)[:300]
            log.warning("control_message_rejected", error=detail[:200])
            return "schema", detail
        try:
            verified = self.control_trust.verify(rec.value)
            self._not_replayed(verified.payload["signature"], verified.origin)
            origin = verified.origin
            operator = origin in self.settings.learner.control_origins
            acts = msg.action == "retrain" or (
                msg.action in ("promote", "rollback") and "expect_serving" in msg.details
            )
            if acts and not operator:  # drift origins announce; only operators command
                raise Refused(
                    "action_not_allowed", f"origin {origin!r} may only announce drift", origin
                )
        except Refused as exc:
            self._count_refusal("control", exc, rec)
            claimed = (exc.origin or msg.origin or "?")[:200]
            # Signed by its origin, asking for what it may not; anything else: who it claims.
            verified_actor = exc.reason == "action_not_allowed"
            self._audit(
                claimed if verified_actor else f"unverified:{claimed}",
                "control_refused",
                msg.action,
                str(exc)[:300],
                {
                    "refusal": exc.reason,
                    "actor": msg.actor,
                    "version": msg.version,
                    "ts": msg.ts.isoformat(),
                    "topic": rec.topic,
                    "partition": rec.partition,
                    "offset": rec.offset,
                },
            )
            return "origin", str(exc)[:300]
        said = {"actor": msg.actor, "ts": msg.ts.isoformat(), "offset": rec.offset}
        if msg.action in ("promote", "rollback"):
            self._switch_requested(msg, origin, said)
            return None
        if msg.action == "reload":
            return None  # for the workers; the learner follows the registry itself
        CONTROL_IN.labels(msg.action, origin).inc()
        self._audit(origin, f"control_{msg.action}", msg.version, msg.reason, said)
        if msg.action == "retrain":
            self.learner.request(f"operator {msg.actor}: {msg.reason or 'retrain'}")
            log.info("retrain_requested", actor=msg.actor, origin=origin, reason=msg.reason)
            self._save_state()
        elif msg.action == "drift":
            # Seen without labels: the labels must confirm it before a retrain. Labels of
            # items from before the shift, still arriving (they come late), are old world.
            self.learner.drift(f"drift seen by {msg.actor}: {msg.reason}", confirm_with_labels=True)
            self._shift_ts = _when(msg.details.get("item_ts")) or msg.ts
            # A drift moves the fresh pool into memory: both files must change together.
            self._save_state(memory=True)
        return None

    def _switch_requested(self, msg: ControlMessage, origin: str, said: dict[str, Any]) -> None:
        """A verified promote or rollback: an announcement of a switch already made (the
        registry serves ``version``: nothing to do), or a request to make it, which is done
        only while the registry still serves ``details.expect_serving`` (compare and swap:
        a late or repeated request never undoes a later switch)."""
        try:
            current = self.registry.serving()
        except RegistryError as exc:
            log.warning("control_switch_failed", action=msg.action, error=str(exc)[:300])
            return  # a malformed pointer: sync_serving reports it
        if msg.version is None or msg.version == current or "expect_serving" not in msg.details:
            return  # an announcement of a switch made: sync_serving follows the registry
        expect = msg.details.get("expect_serving")
        details = {**said, "via": "control", "previous": current, "expect_serving": expect}
        if expect != current:
            reason = f"serving is {current!r}, the request expected {expect!r}"
            log.info("control_switch_stale", action=msg.action, version=msg.version, reason=reason)
            self._audit(origin, f"control_{msg.action}_ignored", msg.version, reason, details)
            return
        try:
            if msg.action == "rollback" and self.registry.rollback_target() != (
                current,
                msg.version,
            ):
                raise RegistryError(f"a rollback from {current} does not serve {msg.version}")
            self.registry.verify(msg.version)  # refused before anything is written

            def switch() -> None:
                with audited_switch(
                    self.store,
                    self.registry,
                    actor=origin,
                    action=msg.action,
                    target=msg.version,
                    reason=msg.reason,
                    details=details,
                ):
                    if msg.action == "rollback":
                        self.registry.rollback()
                    else:
                        self.registry.promote(msg.version)

            self.waiter.run(switch, "store", what=msg.action)
        except RegistryError as exc:
            log.warning("control_switch_failed", action=msg.action, error=str(exc)[:300])
            self._audit(
                origin, f"control_{msg.action}_failed", msg.version, str(exc)[:300], details
            )
            return
        CONTROL_IN.labels(msg.action, origin).inc()
        log.info("control_switch", action=msg.action, version=msg.version, origin=origin)
        self._send(
            ControlMessage(action=msg.action, version=msg.version, actor=origin, reason=msg.reason)
        )

    def _not_replayed(self, signature: str, origin: str) -> None:
        """Refuse a command already taken (the same signed bytes, sent again within the
        replay window); older ones are refused as stale by their ts."""
        now = time.monotonic()
        window = self.control_trust.max_age_s or 0.0
        self._seen = {sig: t for sig, t in self._seen.items() if now - t <= 2 * window}
        if signature in self._seen:
            raise Refused("replayed", f"this command from {origin!r} was already taken", origin)
        self._seen[signature] = now

    def _count_refusal(self, kind: str, refusal: Refused, rec: Any) -> None:
        """Counted per message, logged once a minute per origin and reason."""
        # Only names this learner knows become metric labels: forged names are unbounded.
        if refusal.origin is None:
            origin = "none"
        else:
            origin = refusal.origin if refusal.origin in self._known_origins else "other"
        REFUSED.labels(kind, origin, refusal.reason).inc()
        self.refusals.refused(kind, refusal, origin=origin, topic=rec.topic)

    def _audit(
        self, actor: str, action: str, target: str | None, reason: str | None, details: dict
    ) -> None:
        self.waiter.run(lambda: self.store.audit(actor, action, target, reason, details), "store")

    def _announce_drift(self, event: DriftEvent) -> None:
        row = {
            **event.as_row(),
            "origin": "learner",
            "model_version": self.learner.version,
            "details": {"labels_seen": self.learner.labels_seen},
        }
        self.waiter.run(lambda: self.store.record_drift(row), "store")
        log.info("drift_detected", origin="learner", **event.as_row())
        self._send(
            ControlMessage(
                action="drift",
                actor="learner",
                version=self.learner.version,
                reason=f"{event.detector} on {event.signal}",
            )
        )

    # -- serving version changes made by operators --------------------------------------

    def reconcile(self, every_s: float = 30.0) -> None:
        """Undo a serving switch whose audit row never committed (now and then)."""
        now = time.monotonic()
        if now - self._reconciled_at < every_s:
            return
        self._reconciled_at = now
        self.waiter.run(lambda: reconcile_serving(self.store, self.registry), "store")

    def sync_serving(self) -> None:
        """Follow an operator's promotion or rollback; a refused version is not followed.

        A version that fails verification or its smoke batch (or a malformed
        pointer) is logged once as ``learner_serving_refused`` and the learner
        keeps its current model; it is not tried again until the pointer moves.
        """
        try:
            current = self.registry.serving()
        except RegistryError as exc:
            self._refuse(None, exc)
            return
        if current is None or current == self.learner.version:
            self._refused = None
            return
        if self._refused is not None and self._refused[0] == current:
            return
        try:
            classifier = self.load(current)
        except (RegistryError, ModelLoadError) as exc:
            self._refuse(current, exc)
            return
        self._refused = None
        if current == self._awaiting:
            self.learner.adopt(classifier, current)  # an operator approved our candidate
            self._awaiting = None
        else:
            self.learner.serve(classifier, current)
        log.info("learner_follows_serving", version=current)
        self._save_state(memory=True)

    def _refuse(self, version: str | None, exc: Exception) -> None:
        refused = (version, str(exc))
        if refused != self._refused:
            log.error(
                "learner_serving_refused",
                version=version,
                serving=self.learner.version,
                reason=str(exc),
            )
        self._refused = refused

    # -- retraining -----------------------------------------------------------------------

    def retrain_if_due(self, stop: threading.Event | None = None) -> Outcome | None:
        checked = self.learner.last_confirmation
        trigger = self.learner.due()
        confirmation = self.learner.last_confirmation
        if confirmation is not checked and confirmation and not confirmation["confirmed"]:
            log.info("drift_not_confirmed_by_labels", **confirmation)
            self._save_state()
        if trigger is None:
            return None
        started = time.monotonic()
        ended = "failed"
        try:
            outcome, ended = self._retrain(trigger, stop)
            return outcome
        except Stopping:
            ended = "abandoned"
            raise
        finally:
            observe_retrain(time.monotonic() - started, ended)

    def _retrain(self, trigger: str, stop: threading.Event | None) -> tuple[Outcome | None, str]:
        """Train, judge, write and decide on one candidate; returns how it ended too."""
        log.info("retrain_started", trigger=trigger, fresh=len(self.learner.fresh_train))
        shadow = self.waiter.run(
            lambda: self.store.recent_texts(self.settings.learner.shadow_items), "store"
        )
        candidate = self.learner.train_candidate(trigger, progress=self.progress, stop=stop)
        if candidate.report.interrupted:
            # Shutting down: drop the half-trained candidate. The saved state still asks
            # for this retrain, so the next learner runs it.
            log.info("retrain_abandoned", trigger=trigger, steps=candidate.report.steps)
            return None, "abandoned"
        outcome = self.learner.judge(candidate, shadow)
        self._save_state()
        card = {
            **outcome.card(),
            "created_at": datetime.now(UTC).isoformat(),
            "created_by": "learner",
            "metrics": {"holdout": _holdout_metrics(outcome)},
        }
        # A full disk (or a registry gone read-only) is waited out with the candidate in hand.
        version = self.waiter.run(
            lambda: self.registry.write_version(
                save_version(outcome.classifier, card, export=self.export), card
            ),
            "registry",
            what="write_version",
        )
        RETRAINS.labels(outcome.decision).inc()
        details = {"trigger": trigger, "gate": card["gate"], "training": card["training"]}
        if outcome.decision == "promote":
            try:
                smoke_check(outcome.classifier, version)  # proven before it serves
                previous = self.registry.serving()

                def switch() -> None:
                    # Audit first: the switch stands only once its audit row is committed.
                    with audited_switch(
                        self.store,
                        self.registry,
                        actor="learner",
                        action="promote",
                        target=version,
                        reason=trigger,
                        details={**details, "previous": previous},
                    ):
                        self.registry.promote(version)

                # A store outage is waited out: the promotion happens once it is back.
                self.waiter.run(switch, "store", what="promote")
            except (RegistryError, ModelLoadError, SQLAlchemyError, OSError) as exc:
                # Nothing changed: the serving version and the learner's model stay.
                log.error(
                    "model_promotion_failed",
                    version=version,
                    serving=self.learner.version,
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
                self._save_state(memory=True)
                return outcome, "failed"
            self.learner.adopt(outcome.classifier, version)
            self._send(
                ControlMessage(action="promote", version=version, actor="learner", reason=trigger)
            )
            log.info("model_promoted", version=version, previous=previous, **_gate_log(outcome))
        elif outcome.decision == "await_approval":
            self._awaiting = version
            self.waiter.run(
                lambda: self.store.audit(
                    "learner", "candidate_awaiting_approval", version, trigger, details
                ),
                "store",
            )
            log.info("candidate_awaiting_approval", version=version, **_gate_log(outcome))
        else:
            reasons = outcome.gate.reasons if outcome.gate else []
            self.waiter.run(
                lambda: self.store.audit(
                    "learner", "candidate_rejected", version, "; ".join(reasons), details
                ),
                "store",
            )
            log.info("candidate_rejected", version=version, reasons=reasons, **_gate_log(outcome))
        self._save_state(memory=True)
        ended = {"promote": "promoted", "reject": "rejected"}.get(
            outcome.decision, outcome.decision
        )
        return outcome, ended

    # -- plumbing -------------------------------------------------------------------------

    @property
    def producer(self) -> KafkaProducer:
        return self.publisher.producer

    def _send(self, msg: ControlMessage) -> None:
        """Announce on the control topic, checked and retried (workers follow the registry
        themselves, so this never blocks a promotion that already happened)."""
        # Signed as origin "learner": its own drift announcements come back to it.
        value = self.signer.sign_json(msg) if self.signer else msg.model_dump_json().encode()
        out = Outgoing(self.settings.topics.control, None, value, ("control", msg.action))
        self.publisher.deliver([out], self.waiter)

    def _save_state(self, *, memory: bool = False) -> None:
        state = {
            "learner": self.learner.state(),
            "label_seq": self._label_seq,
            "learned_above": sorted(self._learned),
            "awaiting": self._awaiting,
            "shift_ts": self._shift_ts.isoformat() if self._shift_ts else None,
        }

        def write() -> None:
            replay_store.write_json_atomic(self.dir / "state.json", state)
            if memory:
                _save_memories(self.settings, self.learner.replay, self.learner.heldout)

        self.waiter.run(write, "disk", what="save_state")  # a full disk is waited out


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def _letter(
    rec: Any, reason: str, detail: str, now: datetime, mask: Masker | None
) -> dict[str, Any]:
    return rejection_row(
        rec.topic, rec.partition, rec.offset, rec.value, reason, detail, now, mask=mask
    )


def _masked_label(msg: LabelMessage, mask: Masker | None) -> LabelMessage:
    """A label's text and item id masked as the worker masks items (so they still join)."""
    if mask is None:
        return msg
    return msg.model_copy(
        update={
            "text": mask.mask(msg.text) if msg.text else msg.text,
            "item_id": mask.mask_id(msg.item_id) if msg.item_id else msg.item_id,
        }
    )


def _holdout_metrics(outcome: Outcome) -> dict[str, Any]:
    if outcome.gate is None:
        return {}
    return {"accuracy": outcome.gate.new.get("candidate"), "n": outcome.gate.new.get("n")}


def _gate_log(outcome: Outcome) -> dict[str, Any]:
    if outcome.gate is None:
        return {}
    g = outcome.gate
    return {
        "acc_new": round(float(g.new["candidate"]), 4),
        "acc_new_serving": round(float(g.new["serving"]), 4),
        "acc_old": round(float(g.old["candidate"]), 4),
        "acc_old_serving": round(float(g.old["serving"]), 4),
        "shadow_agreement": g.shadow.get("agreement"),
    }


def learner_readiness(proc: LearnerProcess) -> Callable[[], tuple[bool, dict]]:
    def ready() -> tuple[bool, dict]:
        return True, {"model_version": proc.learner.version}

    return ready


def build_learner(
    settings: Settings,
    *,
    progress: bool = False,
    stop: threading.Event | None = None,
    health: Health | None = None,
    serve: bool = True,
) -> tuple[LearnerProcess, Callable[[], None]]:
    """A ready learner process and the function that closes what it opened.

    ``serve``: open its own ``/readyz`` server (the ``learner`` command opens one
    before the lock, so a standby answers too, and passes ``serve=False``)."""
    from moodwire.processes.worker import wait_for
    from stream.clients import ensure_topics, make_consumer, make_producer

    health = health or Health("learner")
    registry = settings.open_registry()
    registry.reap_incoming()  # what a learner killed mid-write left (this one holds the lock)
    store = wait_for("store", lambda: Store(settings.resolved_store_url()), health, stop, settings)
    topics = settings.topics
    wait_for(
        "kafka",
        lambda: ensure_topics(
            settings.kafka_config(), [topics.labels, topics.control], settings.partitions
        ),
        health,
        stop,
        settings,
    )

    def load(version: str) -> SentimentClassifier:
        return load_version(
            registry, version, device=settings.device, max_length=settings.max_length
        )

    consumer = make_consumer(
        settings.kafka_config(),
        topics.labels,
        topics.control,
        group_id=f"{settings.consumer_group}-learner",
        client_id="moodwire-learner",
    )
    publisher = Publisher(
        lambda: make_producer(settings.kafka_config(), client_id="moodwire-learner")
    )
    try:
        proc = LearnerProcess(
            settings, store, registry, consumer, publisher, load, progress=progress, health=health
        )
    except BaseException:  # a refused model: close what was opened, then say why
        consumer.close(autocommit=False)
        publisher.close()
        raise

    server = (
        serve_health(
            health,
            learner_readiness(proc),
            port=settings.metrics_port,
            host=settings.metrics_host,
            stale_s=liveness_s(settings),
        )
        if serve
        else None
    )

    def close() -> None:
        consumer.close(autocommit=False)
        publisher.close()
        if server is not None:
            server.close()

    return proc, close
