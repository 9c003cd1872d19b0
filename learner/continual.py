"""Continual learning: fresh labels plus replayed ones → a candidate → gates → promotion.

:class:`ContinualLearner` is the learner's logic with no I/O: the ``moodwire
learner`` process feeds it labels from Kafka and writes what it decides to the
registry; ``moodwire bench continual`` feeds it a labelled stream in memory.
Both run exactly this code.

How a label flows:

* It updates the supervised drift detector on the serving model's error stream.
* It joins the *fresh* pool: one label in ``holdout_every`` (chosen by a hash
  of the text, so the choice is stable across restarts) is held out to judge
  candidates on the new data; the rest are for training.
* A retrain is due on drift or an operator's command (once there are
  ``min_new_labels`` fresh training labels), or after ``retrain_every`` new
  labels on their own.
* The candidate is the serving model fine-tuned on the fresh training labels
  mixed with examples replayed from memory (``replay_ratio`` per fresh one,
  drawn in the proportions the classes were seen in). On replayed examples it
  also learns to keep the serving model's output distribution (``distill``, as
  in dark experience replay): the label says what is right, the serving model's
  probabilities say what the model knew, and keeping those is what holds old
  knowledge in place while the fresh labels move the new.
* Gates: the candidate must beat the serving model on the held-out fresh labels
  and lose no more than ``old_tolerance`` on the held-out memory (old labelled
  data no version trained on: the bootstrap's held-out part, then held-out
  fresh labels of earlier worlds), and no more than that on the memory as it was
  when the current shift began against the version serving then (so promotions
  in a row cannot add their losses up); shadow scoring of recent live items reports agreement
  and confidence beside the serving model. The gates also judge points between the
  serving and the candidate weights when ``merge`` is on: the best that passes serves.
* On promotion the fresh labels become memory (training ones replayed, held-out
  ones held out) and the fresh pool starts again; a rejected candidate leaves the
  pool to grow. A drift event does the same to the pool gathered before it, so
  the retrain it asks for learns the world after the shift.

Strategies (the benchmark compares them in one run): ``moodwire`` (the above),
``naive`` (fresh labels only, no replay, no gates), ``joint`` (everything seen,
no gates: the upper bound), ``frozen`` (never retrains).

>>> LearnerConfig(strategy="naive").replay_ratio
2.0
>>> held_out("ACME beats estimates", 5) in (True, False)
True
"""

from __future__ import annotations

import copy
import hashlib
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from learner.classifier import SentimentClassifier
from learner.config import REPLAY_KINDS, LearnerConfig
from learner.data import LABELS, LabelledText
from learner.drift import DriftEvent, detector_window, make_detector
from learner.replay import ClassBalancedReservoir, DiverseMemory, NoReplay, ReplayBuffer, Reservoir
from learner.train import TrainConfig, TrainReport, fine_tune


def held_out(text: str, every: int) -> bool:
    """Whether a labelled text is held out for evaluation (stable: a hash of the text)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % every == 0


def make_replay(kind: str, capacity: int, seed: int = 0) -> ReplayBuffer:
    if kind == "class_balanced":
        return ClassBalancedReservoir(capacity, seed=seed)
    if kind == "reservoir":
        return Reservoir(capacity, seed=seed)
    if kind == "diverse":
        return DiverseMemory(capacity, seed=seed)
    if kind == "off":
        return NoReplay()
    raise ValueError(f"unknown replay kind {kind!r}; choose from {REPLAY_KINDS}")


@dataclass
class GateResult:
    """What a candidate showed beside the serving model, and the verdict."""

    passed: bool
    reasons: list[str]
    new: dict[str, float | int]
    old: dict[str, Any]
    shadow: dict[str, float | int]
    merge: dict[str, Any] | None = None  # the interpolated points judged (see judge())

    def as_dict(self) -> dict[str, Any]:
        def clean(d: dict) -> dict:  # NaN (nothing to measure on) is not JSON
            return {k: None if isinstance(v, float) and v != v else v for k, v in d.items()}

        out = asdict(self)
        for key in ("new", "old", "shadow"):
            out[key] = clean(out[key])
        return out


@dataclass
class Outcome:
    """One retrain attempt: the candidate, why it ran, what it trained on, the verdict."""

    trigger: str
    classifier: SentimentClassifier
    report: TrainReport
    data: dict[str, int]
    gate: GateResult | None  # None for strategies without gates (naive, joint)
    decision: str  # "promote", "reject" or "await_approval"
    parent: str
    calibration: dict[str, Any] | None = None  # the temperature fitted on its held-out labels

    def card(self) -> dict[str, Any]:
        """What goes into the candidate version's card."""
        return {
            "kind": "incremental",
            "parent": self.parent,
            "trigger": self.trigger,
            "training": {**asdict(self.report), "data": self.data},
            "gate": self.gate.as_dict() if self.gate else None,
            "decision": self.decision,
            "calibration": self.calibration,
        }


# The candidate's share of the weights at each point the gates judge (1.0 = as fine-tuned).
MERGE_WEIGHTS = (1.0, 0.75, 0.5, 0.25)


def merged(
    serving: SentimentClassifier, candidate: SentimentClassifier, weight: float
) -> SentimentClassifier:
    """A copy of ``candidate`` whose weights are ``weight`` of its own plus the rest of serving's.

    Both must be the same architecture (a candidate is a fine-tuned copy of the serving
    model). Frozen layers are equal in both, so only what fine-tuning moved changes.

    >>> import torch
    >>> a = torch.nn.Linear(1, 1); b = copy.deepcopy(a)
    >>> _ = torch.nn.init.constant_(a.weight, 0.0); _ = torch.nn.init.constant_(b.weight, 4.0)
    >>> _mix(a.state_dict(), b.state_dict(), 0.25)["weight"].item()
    1.0
    """
    out = copy.deepcopy(candidate)
    out.model.load_state_dict(
        _mix(serving.model.state_dict(), candidate.model.state_dict(), weight)
    )
    return out


def _mix(serving: dict, candidate: dict, weight: float) -> dict:
    if serving.keys() != candidate.keys():
        raise ValueError("cannot interpolate models of different architectures")
    return {
        k: weight * v + (1.0 - weight) * serving[k] if v.is_floating_point() else v
        for k, v in candidate.items()
    }


@dataclass
class _Point:
    """One candidate (or blend) the gates judged."""

    weight: float  # the candidate's share of the weights (1.0 = as fine-tuned)
    classifier: SentimentClassifier
    reasons: list[str]  # why it fails; empty = passes (shadow agreement aside)
    new: dict[str, Any]
    old: dict[str, Any]
    no_gain: bool  # judged on enough new labels, and no better than serving there

    def score(self) -> float:
        return self.new["candidate"] + (self.old["candidate"] if self.old["n"] else 0.0)

    def record(self) -> dict[str, Any]:
        old = round(self.old["candidate"], 4) if self.old["n"] else None
        return {
            "weight": self.weight,
            "new": round(self.new["candidate"], 4),
            "old": old,
            "passed": not self.reasons,
        }


def accuracy(classifier: SentimentClassifier, data: list[LabelledText]) -> float:
    if not data:
        return float("nan")
    predicted = classifier.predict([x.text for x in data])
    return float(np.mean([p == x.label for p, x in zip(predicted, data, strict=True)]))


@dataclass
class ContinualLearner:
    """The learner's state and decisions (no I/O; see the module docstring)."""

    classifier: SentimentClassifier
    version: str
    config: LearnerConfig = field(default_factory=LearnerConfig)
    replay: ReplayBuffer | None = None
    heldout: Reservoir | None = None  # old labelled data no version trained on (the old gate)

    def __post_init__(self) -> None:
        cfg = self.config
        if self.replay is None:
            kind = "off" if cfg.strategy in ("naive", "frozen") else cfg.replay_kind
            self.replay = make_replay(kind, cfg.replay_capacity, cfg.seed)
        if self.heldout is None:
            self.heldout = Reservoir(cfg.old_holdout_max, seed=cfg.seed + 1)
        self._rng = random.Random(cfg.seed)
        self.fresh_train: list[LabelledText] = []
        self.fresh_holdout: list[LabelledText] = []
        self.everything: list[LabelledText] = []  # joint training's memory (unbounded)
        self.labels_seen = 0
        self._labels_at_attempt = 0
        self.pending: str | None = None
        # After a drift, the learner catches up on a geometric schedule: it retrains each
        # time the labels since the drift have doubled, until ``retrain_every`` of them.
        self._episode_start: int | None = None  # labels_seen at the drift
        self._episode_next = 0  # labels since the drift at which to retrain next
        self._unconfirmed = False  # a workers' drift the labels have not confirmed yet
        self._episode_spent = False  # this episode's candidate learned nothing the model lacked
        # The serving model's accuracy on the labels just before the drift, and how many.
        self._recent_before: tuple[float, int] | None = None
        self.last_confirmation: dict[str, Any] | None = None
        self._errors = make_detector(
            cfg.error_detector, warmup=cfg.error_warmup, cooldown=cfg.error_cooldown
        )
        # The held-out memory as it was when the current shift began, and how well the
        # version serving then did on it. Every candidate until the next shift is held to
        # that, so promotions in a row, each within the tolerance of its parent, cannot add
        # up to more forgetting than one is allowed; and labels of the new world that join
        # the memory later cannot hide a loss on the old one.
        self.before_shift: list[LabelledText] = []
        self.before_shift_acc: float | None = None
        self.before_shift_version: str | None = None

    # -- memory ---------------------------------------------------------------------------

    def remember(self, items: list[LabelledText], heldout: list[LabelledText] = ()) -> None:
        """Memory of what the serving model knows: its training data, and data it never saw.

        ``items`` are replayed in later fine-tunes; ``heldout`` (old data that no
        version trained on, e.g. the bootstrap's held-out part) is what the old-data
        gate measures forgetting on.
        """
        for item in items:
            self.replay.add(item)
        for item in heldout:
            self.heldout.add(item)
        if self.config.strategy == "joint":
            self.everything.extend(items)

    # -- labels and triggers --------------------------------------------------------------

    def observe(
        self,
        items: list[LabelledText],
        predicted: list[str] | None = None,
        *,
        position: int | None = None,
    ) -> list[DriftEvent]:
        """Take newly arrived labels; returns supervised drift events they fired.

        ``predicted`` is what the serving model said about each item (computed
        here when not given); ``position`` places the events in the caller's stream.
        """
        if not items:
            return []
        if predicted is None:
            predicted = self.classifier.predict([x.text for x in items])
        events = []
        for item, guess in zip(items, predicted, strict=True):
            self.labels_seen += 1
            if self._errors.update(float(guess != item.label)).drift_detected:
                events.append(
                    DriftEvent(
                        self._errors.name,
                        "error_rate",
                        round(float(self._errors.statistic), 6),
                        detector_window(self._errors),
                        position if position is not None else self.labels_seen,
                    )
                )
                self.drift(f"drift: {self._errors.name} on the error rate")
            if held_out(item.text, self.config.holdout_every):
                self.fresh_holdout.append(item)
            else:
                self.fresh_train.append(item)
        del self.fresh_train[: -self.config.max_fresh]
        del self.fresh_holdout[: -self.config.max_fresh // self.config.holdout_every]
        return events

    def request(self, reason: str) -> None:
        """Ask for a retrain on the fresh labels there are (an operator's command)."""
        if self.pending is None:
            self.pending = reason

    def drift(self, reason: str, *, confirm_with_labels: bool = False) -> None:
        """The stream shifted: retrain on what comes after the shift.

        The fresh labels gathered before it describe the old world, so they move
        into memory (replayed and held out as old data from now on), and the
        retrain waits for ``min_new_labels`` fresh ones. Then, to catch up with the
        new world, it retrains again each time the labels since the drift have
        doubled, until there are ``retrain_every`` of them. Drift events during
        that catch-up are the same shift: they keep the fresh labels, unless the
        episode is spent: its candidate showed no gain on the fresh labels, so the
        serving model already read them as well as training could. A drift event
        after that is a new shift (the first was a false start, e.g. a surge of bad
        news that moved the embeddings): a new episode, on labels from after it.

        With ``confirm_with_labels`` (a drift the workers saw without labels), the
        retrain runs only if the fresh labels confirm it: the serving model does
        worse on them than on the fresh labels just before the drift (the same
        kind of data, from just before), or than on the old held-out data when
        there were too few of those, by more than ``drift_confirm_margin``;
        otherwise the episode ends with no retrain.
        """
        if self.config.strategy == "frozen":
            return
        if self._episode_start is None or self._episode_spent:
            if self._episode_spent:
                self._episode_spent = False
                self.pending = None  # the spent episode's reason is not this shift's
            recent = self.fresh_train + self.fresh_holdout
            self._recent_before = None
            if confirm_with_labels and len(recent) >= self.config.min_holdout:
                self._recent_before = (accuracy(self.classifier, recent), len(recent))
            self._retire_fresh()
            self._episode_start = self.labels_seen
            self._episode_next = 0
            self._mark_before_shift()
            self._unconfirmed = confirm_with_labels
        elif not confirm_with_labels:
            self._unconfirmed = False  # the labels' own detector saw it too
        if self.pending is None:
            self.pending = reason

    def _mark_before_shift(self) -> None:
        self.before_shift = list(self.heldout.items())
        self.before_shift_acc = (
            accuracy(self.classifier, self.before_shift) if self.before_shift else None
        )
        self.before_shift_version = self.version

    def _retire_fresh(self) -> None:
        # Held-out fresh labels become held-out memory, unless their text was trained on
        # before (a re-sent item): measuring forgetting on memorised items flatters the
        # serving model.
        known = {x.text for x in self.replay.items()}
        for item in self.fresh_train:
            self.replay.add(item)
        for item in self.fresh_holdout:
            (self.replay if item.text in known else self.heldout).add(item)
        if self.config.strategy == "joint":
            self.everything.extend(self.fresh_train)
        self.fresh_train, self.fresh_holdout = [], []

    def due(self) -> str | None:
        """Why a retrain should run now, or None."""
        if self.config.strategy == "frozen":
            return None
        if len(self.fresh_train) < self.config.min_new_labels:
            return None
        if self.pending is not None and self._unconfirmed:
            self._unconfirmed = False
            if not self._confirmed_by_labels():
                self.pending = None
                self._end_episode()
                return None
        if self.pending is not None:
            return self.pending
        if self._episode_start is not None:
            since = self.labels_seen - self._episode_start
            if since >= self.config.retrain_every:
                self._end_episode()  # caught up: back to the regular schedule
            elif self._episode_next and since >= self._episode_next:
                return f"catching up after drift: {since} labels since"
        new = self.labels_seen - self._labels_at_attempt
        if new >= self.config.retrain_every:
            return f"{new} new labels"
        return None

    def _confirmed_by_labels(self) -> bool:
        """Whether the fresh labels show the serving model doing worse than before the shift."""
        fresh = self.fresh_train + self.fresh_holdout
        if self._recent_before is not None:
            before, n_before, reference = *self._recent_before, "labels just before"
        elif self.before_shift_acc is not None:
            before, n_before, reference = (
                self.before_shift_acc,
                len(self.before_shift),
                "old held-out labels",
            )
        else:
            return True
        if not fresh:
            return True
        now = accuracy(self.classifier, fresh)
        confirmed = now < before - self.config.drift_confirm_margin
        self.last_confirmation = {
            "fresh_accuracy": round(now, 4),
            "fresh": len(fresh),
            "before_accuracy": round(before, 4),
            "before": n_before,
            "reference": reference,
            "confirmed": confirmed,
        }
        return confirmed

    # -- a retrain ------------------------------------------------------------------------

    def training_data(self) -> tuple[list[LabelledText], dict[str, int]]:
        cfg = self.config
        if cfg.strategy == "joint":
            data = self.everything + self.fresh_train
            return data, {"fresh": len(self.fresh_train), "everything": len(data)}
        fresh = list(self.fresh_train)
        replayed = (
            self._replay_sample(round(len(fresh) * cfg.replay_ratio))
            if cfg.strategy == "moodwire"
            else []
        )
        return fresh + replayed, {"fresh": len(fresh), "replayed": len(replayed)}

    def _replay_sample(self, n: int) -> list[LabelledText]:
        """``n`` remembered examples, classes in the proportions they were seen in."""
        pool: dict[str, list[LabelledText]] = {lab: [] for lab in LABELS}
        for x in self.replay.items():
            pool[x.label].append(x)
        seen = getattr(self.replay, "seen_by_label", lambda: {})() or {
            lab: len(v) for lab, v in pool.items()
        }
        total = sum(seen.values()) or 1
        out = []
        for lab, items in pool.items():
            want = min(len(items), round(n * seen.get(lab, 0) / total))
            out.extend(self._rng.sample(items, want))
        return out

    def teacher_targets(
        self, data: list[LabelledText], summary: dict[str, int]
    ) -> np.ndarray | None:
        """The serving model's probabilities on the replayed part of ``data`` (NaN elsewhere)."""
        replayed = summary.get("replayed", 0)
        if self.config.strategy != "moodwire" or self.config.distill <= 0 or not replayed:
            return None
        teacher = np.full((len(data), len(LABELS)), np.nan, dtype=np.float32)
        teacher[-replayed:] = self.classifier.predict_proba([x.text for x in data[-replayed:]])
        return teacher

    def old_holdout(self) -> list[LabelledText]:
        return self.heldout.items()

    def _end_episode(self) -> None:
        self._episode_start = None
        self._episode_spent = False

    def start_attempt(self) -> None:
        """Record that an attempt starts now: what :meth:`due` counts from next time."""
        self._labels_at_attempt = self.labels_seen
        self.pending = None
        if self._episode_start is not None:
            self._episode_next = 2 * max(1, self.labels_seen - self._episode_start)

    def train_candidate(
        self, trigger: str, *, progress: bool = False, stop: threading.Event | None = None
    ) -> Outcome:
        """Fine-tune a copy of the serving model; the serving one is never touched."""
        data, summary = self.training_data()
        self.start_attempt()
        candidate = copy.deepcopy(self.classifier)
        cfg = TrainConfig.for_learner(self.config)
        if self.config.strategy == "joint":  # the upper bound: one full pass, no budget
            cfg = TrainConfig(epochs=1.0, lr=self.config.lr, seed=self.config.seed)
        teacher = self.teacher_targets(data, summary)
        if teacher is not None:
            summary["distilled"] = int(summary.get("replayed", 0))
        report = fine_tune(candidate, data, cfg, progress=progress, stop=stop, teacher=teacher)
        # Only a judged moodwire candidate may serve; the baselines promote unconditionally.
        decision = "reject" if self.config.strategy == "moodwire" else "promote"
        return Outcome(trigger, candidate, report, summary, None, decision, self.version)

    def judge(self, outcome: Outcome, shadow_texts: list[str]) -> Outcome:
        """Run the gates (moodwire strategy) and set the decision.

        With ``merge`` on, the gates also judge the serving and candidate weights
        interpolated (``MERGE_WEIGHTS`` of the candidate, as in WiSE-FT): the fine-tuned
        candidate alone may gain on the new world and lose on the old, and a point
        between them often keeps most of the gain and little of the loss. Of the points
        that pass every gate, the one with the best held-out new plus old accuracy serves
        (the full candidate on a tie); the card records every point.
        """
        if self.config.strategy != "moodwire":
            return outcome
        cfg = self.config
        serv = self.classifier
        new, old = self.fresh_holdout, self.old_holdout()
        serving = {"new": accuracy(serv, new), "old": accuracy(serv, old)}
        points = [
            self._gates(
                outcome.classifier if w == 1.0 else merged(serv, outcome.classifier, w),
                w,
                new,
                old,
                serving,
            )
            for w in (MERGE_WEIGHTS if cfg.merge else (1.0,))
        ]
        passing = [p for p in points if not p.reasons]
        if not passing and points[0].no_gain and self._episode_start is not None:
            self._episode_spent = True  # see drift(): the next drift is a new shift
        # The best held-out new + old accuracy; max() keeps the first (the full one) on a tie.
        chosen = max(passing, key=_Point.score) if passing else points[0]
        cand, reasons = chosen.classifier, list(chosen.reasons)
        shadow = _shadow(serv, cand, shadow_texts[-cfg.shadow_items :])
        if shadow["n"] and shadow["agreement"] < cfg.min_shadow_agreement:
            reasons.append(
                f"shadow agreement {shadow['agreement']:.3f} below {cfg.min_shadow_agreement}"
            )
        passed = not reasons
        outcome.classifier = cand
        outcome.gate = GateResult(passed, reasons, chosen.new, chosen.old, shadow)
        if cfg.merge:
            outcome.gate.merge = {"weight": chosen.weight, "tried": [p.record() for p in points]}
        if not passed:
            outcome.decision = "reject"
        else:
            outcome.decision = "await_approval" if cfg.require_approval else "promote"
            # Fine-tuning sharpens or flattens the confidence the last temperature fixed:
            # a new one is fitted on the held-out labels (it changes no label, so none of
            # the gates above would have judged otherwise).
            outcome.calibration = _recalibrate(cand, [*new, *old])
        return outcome

    def _gates(
        self,
        cand: SentimentClassifier,
        weight: float,
        new: list[LabelledText],
        old: list[LabelledText],
        serving: dict[str, float],
    ) -> _Point:
        """Every gate but shadow agreement, on one candidate (or blend)."""
        cfg = self.config
        reasons = []
        new_stats = {"n": len(new), "serving": serving["new"], "candidate": accuracy(cand, new)}
        old_stats: dict[str, Any] = {
            "n": len(old),
            "serving": serving["old"],
            "candidate": accuracy(cand, old),
        }
        if self.before_shift and self.before_shift_acc is not None:
            old_stats["before_shift_n"] = len(self.before_shift)
            old_stats["before_shift_version"] = self.before_shift_version
            old_stats["before_shift_then"] = self.before_shift_acc
            old_stats["before_shift_candidate"] = accuracy(cand, self.before_shift)
        no_gain = not new_stats["candidate"] > new_stats["serving"] + cfg.min_new_gain
        judged = len(new) >= cfg.min_holdout
        if not judged:
            reasons.append(f"only {len(new)} held-out new labels (need {cfg.min_holdout})")
        elif no_gain:
            reasons.append(
                f"no gain on new data: {new_stats['candidate']:.3f} vs serving "
                f"{new_stats['serving']:.3f}"
            )
        if old and old_stats["candidate"] < old_stats["serving"] - cfg.old_tolerance:
            reasons.append(
                f"forgets old data: {old_stats['candidate']:.3f} vs serving "
                f"{old_stats['serving']:.3f} (tolerance {cfg.old_tolerance})"
            )
        then = old_stats.get("before_shift_then")
        if then is not None and old_stats["before_shift_candidate"] < then - cfg.old_tolerance:
            reasons.append(
                f"forgets the world before the shift: {old_stats['before_shift_candidate']:.3f}"
                f" vs {self.before_shift_version}'s {then:.3f} (tolerance {cfg.old_tolerance})"
            )
        return _Point(weight, cand, reasons, new_stats, old_stats, judged and no_gain)

    def adopt(self, classifier: SentimentClassifier, version: str) -> None:
        """The candidate now serves: fresh labels become memory, the error stream restarts."""
        self.classifier = classifier
        self.version = version
        self._retire_fresh()
        self._errors = make_detector(
            self.config.error_detector,
            warmup=self.config.error_warmup,
            cooldown=self.config.error_cooldown,
        )

    def state(self) -> dict[str, Any]:
        """What must survive a restart besides the replay buffer (which saves itself)."""
        return {
            "version": self.version,
            "labels_seen": self.labels_seen,
            "labels_at_attempt": self._labels_at_attempt,
            "pending": self.pending,
            "episode_start": self._episode_start,
            "episode_next": self._episode_next,
            "unconfirmed": self._unconfirmed,
            "episode_spent": self._episode_spent,
            "recent_before": list(self._recent_before) if self._recent_before else None,
            "before_shift": [[x.text, x.label] for x in self.before_shift],
            "before_shift_acc": self.before_shift_acc,
            "before_shift_version": self.before_shift_version,
            "fresh_train": [[x.text, x.label] for x in self.fresh_train],
            "fresh_holdout": [[x.text, x.label] for x in self.fresh_holdout],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.labels_seen = int(state.get("labels_seen", 0))
        self._labels_at_attempt = int(state.get("labels_at_attempt", 0))
        self.pending = state.get("pending")
        self._episode_start = state.get("episode_start")
        self._episode_next = int(state.get("episode_next", 0))
        self._unconfirmed = bool(state.get("unconfirmed", False))
        self._episode_spent = bool(state.get("episode_spent", False))
        recent = state.get("recent_before")
        self._recent_before = (float(recent[0]), int(recent[1])) if recent else None
        self.before_shift = [LabelledText(t, lab) for t, lab in state.get("before_shift", [])]
        self.before_shift_acc = state.get("before_shift_acc")
        self.before_shift_version = state.get("before_shift_version")
        self.fresh_train = [LabelledText(t, lab) for t, lab in state.get("fresh_train", [])]
        self.fresh_holdout = [LabelledText(t, lab) for t, lab in state.get("fresh_holdout", [])]

    def serve(self, classifier: SentimentClassifier, version: str) -> None:
        """Another version serves now (an operator promoted or rolled back).

        The operator's choice is the new reference for the world before the shift.
        """
        self.classifier = classifier
        self.version = version
        if self.before_shift:
            self._mark_before_shift()

    def step(self, shadow_texts: list[str], *, progress: bool = False) -> Outcome | None:
        """Retrain and judge if due (the caller writes, promotes and calls :meth:`adopt`)."""
        trigger = self.due()
        if trigger is None:
            return None
        return self.judge(self.train_candidate(trigger, progress=progress), shadow_texts)


def _recalibrate(
    classifier: SentimentClassifier, held_out: list[LabelledText]
) -> dict[str, Any] | None:
    if len(held_out) < 20:
        return None
    from learner.calibration import calibrate

    labels = list(classifier.labels)
    probs = classifier.predict_proba([x.text for x in held_out])
    return calibrate(classifier, probs, np.asarray([labels.index(x.label) for x in held_out]))


def _shadow(
    serving: SentimentClassifier, candidate: SentimentClassifier, texts: list[str]
) -> dict[str, float | int]:
    if not texts:
        return {"n": 0, "agreement": float("nan")}
    ps, pc = serving.predict_proba(texts), candidate.predict_proba(texts)
    return {
        "n": len(texts),
        "agreement": float(np.mean(ps.argmax(1) == pc.argmax(1))),
        "serving_confidence": float(ps.max(1).mean()),
        "candidate_confidence": float(pc.max(1).mean()),
    }
