"""``moodwire bench continual``: strategies compared on a sequence of labelled phases.

Each phase file keeps a seeded, stratified 20 % held out; the rest is its
stream part. A model is bootstrapped on phase A's stream part, less a seeded
20 % (``reserve``) that the learner keeps as its held-out memory of A, so the gate
measures forgetting on data no version trained on. Then the stream parts of all
phases are streamed in order, in batches, through the same
:class:`~learner.continual.ContinualLearner` and
:class:`~learner.drift.StreamMonitor` the learner and worker processes run.
Every item is first scored by the strategy's serving model (prequential
accuracy), its label arrives ``label_delay`` items later (for a
``label_fraction`` of items), and retrains, gates and promotions happen between
batches exactly as in production.

Strategies, in one run from the same bootstrapped model: ``frozen``, ``naive``
(fresh labels only, no replay, same triggers), ``moodwire`` (replay, gates) and
``joint`` (everything seen: the upper bound).

A second stream checks false alarms: phase A (stream and held-out parts)
shuffled and cycled to ``null_items`` items, scored by the bootstrapped model
with every detector on.
"""

from __future__ import annotations

import copy
import json
import platform
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from learner.classifier import SentimentClassifier
from learner.config import STRATEGIES, LearnerConfig
from learner.continual import ContinualLearner, accuracy
from learner.data import LabelledText, load_labelled, stratified_split
from learner.drift import DriftEvent, StreamMonitor
from learner.recipe import choose_recipe
from learner.train import TrainConfig
from retrieval.embedder import FrozenEmbedder

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Phase:
    name: str
    stream: list[LabelledText]
    heldout: list[LabelledText]


def load_phases(
    files: list[Path],
    *,
    label_map: dict[str, str] | None,
    holdout: float,
    seed: int,
    keep_order: bool = False,
) -> list[Phase]:
    """Each file split into a stream part and a held-out part (seeded, stratified).

    The stream part is shuffled (seeded) unless ``keep_order``: files without
    timestamps have an arbitrary order, and a phase is meant to be a steady state.
    """
    phases = []
    for k, path in enumerate(files):
        items = load_labelled(path, label_map=label_map)
        stream, heldout = stratified_split(items, holdout, seed)
        if not keep_order:
            random.Random(seed + k).shuffle(stream)
        phases.append(Phase(Path(path).name, stream, heldout))
    return phases


def _forgetting(matrix: list[list[float]]) -> float | None:
    """Per earlier phase, its best accuracy minus its final one, averaged."""
    if len(matrix) < 2:
        return None
    final = matrix[-1]
    drops = [
        max(row[j] for row in matrix[:-1][j:] or [final]) - final[j] for j in range(len(final) - 1)
    ]
    return float(np.mean(drops))


def _forgetting_from_peak(run: _Run, bootstrap: list[float], starts: list[int]) -> float | None:
    """Per earlier phase, the best accuracy a version had on it once it began, minus the final.

    Like ``forgetting``, but over every version that served from the phase's start on
    (each promoted one scored at its promotion), not only those serving at phase ends.
    """
    final = run.matrix[-1]
    if len(run.matrix) < 2:
        return None
    drops = []
    for j in range(len(final) - 1):
        seen = [row[j] for row in run.matrix[j:-1]]
        seen += [p["heldout_acc"][j] for p in run.promotions if p["position"] >= starts[j]]
        if j == 0:
            seen.append(bootstrap[0])
        drops.append(max(seen) - final[j])
    return float(np.mean(drops))


class _Run:
    """One strategy streamed over the phases."""

    def __init__(
        self,
        name: str,
        base: SentimentClassifier,
        config: LearnerConfig,
        memory: list[LabelledText],
        memory_heldout: list[LabelledText],
        heldouts: list[list[LabelledText]],
    ) -> None:
        self.name = name
        self.heldouts = heldouts  # every phase's held-out part, scored at each promotion
        self.learner = ContinualLearner(copy.deepcopy(base), "v1", replace(config, strategy=name))
        self.learner.remember(memory, memory_heldout)
        self.monitor = StreamMonitor()
        self.correct: list[bool] = []
        self.events: list[DriftEvent] = []
        self.promotions: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.matrix: list[list[float]] = []
        self.retrain_seconds = 0.0
        self._versions = 1

    def retrain_if_due(self, position: int, shadow: list[str]) -> None:
        outcome = self.learner.step(shadow)
        if outcome is None:
            return
        self.retrain_seconds += outcome.report.seconds
        record = {
            "position": position,
            "trigger": outcome.trigger,
            "decision": outcome.decision,
            "data": outcome.data,
            "seconds": round(outcome.report.seconds, 1),
            "gate": outcome.gate.as_dict() if outcome.gate else None,
        }
        self.attempts.append(record)
        if outcome.decision == "promote":
            self._versions += 1
            version = f"v{self._versions}"
            self.learner.adopt(outcome.classifier, version)
            self.monitor.model_changed()
            acc = [round(accuracy(outcome.classifier, h), 4) for h in self.heldouts]
            self.promotions.append({"position": position, "version": version, "heldout_acc": acc})
        log.info(
            "bench_retrain",
            strategy=self.name,
            **{k: record[k] for k in ("position", "trigger", "decision")},
        )


def continual(
    phase_files: list[Path],
    out: Path,
    *,
    label_map: dict[str, str] | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    label_delay: int = 50,
    label_fraction: float = 1.0,
    batch: int = 32,
    strategies: tuple[str, ...] = STRATEGIES,
    null_items: int = 5000,
    bootstrap_epochs: float | None = None,
    reserve: float = 0.2,
    learner: LearnerConfig | None = None,
    device: str = "auto",
    keep_order: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; writes ``out`` (JSON) and a PNG beside it; returns the JSON."""
    if len(phase_files) < 2:
        raise ValueError("bench continual needs at least two phases (A, then the shift)")
    if not 0 < reserve < 1:
        raise ValueError(f"reserve must be in (0, 1), got {reserve}")
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {STRATEGIES}")
    config = learner or LearnerConfig()
    started = time.perf_counter()
    torch.manual_seed(seed)
    phases = load_phases(
        phase_files, label_map=label_map, holdout=holdout, seed=seed, keep_order=keep_order
    )
    stream = [x for p in phases for x in p.stream]
    phase_starts = [int(x) for x in np.cumsum([0] + [len(p.stream) for p in phases[:-1]])]

    # The learner's held-out memory of phase A: a seeded slice of its stream part that the
    # bootstrap does not train on, so forgetting is measured on unseen old data.
    trained, reserved = stratified_split(phases[0].stream, reserve, seed + 7)
    t0 = time.perf_counter()
    # As `moodwire bootstrap` trains v1: the recipe chosen on phase A's own rows (a fixed
    # number of passes with --bootstrap-epochs).
    base, boot, recipe = choose_recipe(
        lambda: SentimentClassifier.from_encoder(device=device, seed=seed),
        trained,
        TrainConfig(epochs=bootstrap_epochs or 2.0, seed=seed),
        fixed_epochs=bootstrap_epochs is not None,
        seed=seed,
        progress=progress,
    )
    bootstrap = {
        "trained_on": len(trained),
        "reserved_as_heldout_memory": len(reserved),
        "seconds": round(time.perf_counter() - t0, 1),
        "heldout_acc": [round(accuracy(base, p.heldout), 4) for p in phases],
        "samples_per_s": round(boot.samples_per_s, 1),
        "recipe": recipe["chosen"],
        "temperature": recipe.get("calibration", {}).get("temperature"),
    }
    log.info("bench_bootstrapped", **bootstrap)

    embedder = FrozenEmbedder(device=base.device)
    null_stream = _null_stream(phases[0], null_items, seed)
    vectors = embedder.embed([x.text for x in stream] + [x.text for x in null_stream])
    stream_vectors, null_vectors = vectors[: len(stream)], vectors[len(stream) :]

    rng = random.Random(seed)
    labelled = [rng.random() < label_fraction for _ in stream]
    heldouts = [p.heldout for p in phases]
    runs = {name: _Run(name, base, config, trained, reserved, heldouts) for name in strategies}
    for run in runs.values():
        _stream(run, phases, stream, stream_vectors, labelled, label_delay, batch)
    results = {}
    for name, run in runs.items():
        results[name] = {
            "acc_matrix": [[round(a, 4) for a in row] for row in run.matrix],
            "final_avg_acc": round(float(np.mean(run.matrix[-1])), 4),
            "forgetting": None if (f := _forgetting(run.matrix)) is None else round(f, 4),
            # Rows are taken at phase ends; a version promoted mid-phase may have done better
            # on an earlier phase and lost it again before the phase ended.
            "forgetting_from_peak": None
            if (fp := _forgetting_from_peak(run, bootstrap["heldout_acc"], phase_starts)) is None
            else round(fp, 4),
            "prequential_acc": round(float(np.mean(run.correct)), 4),
            "prequential_acc_by_phase": [
                round(float(np.mean(run.correct[s:e])), 4)
                for s, e in zip(phase_starts, [*phase_starts[1:], len(stream)], strict=True)
            ],
            "promotions": run.promotions,
            "retrains": run.attempts,
            "retrain_seconds": round(run.retrain_seconds, 1),
        }
    shipped = runs.get("moodwire") or next(iter(runs.values()))
    drift_events = [{**e.as_row(), "strategy": shipped.name} for e in shipped.events]
    null = _null_run(base, config, null_stream, null_vectors, label_delay, batch)

    result = {
        "benchmark": "continual",
        "phases": [
            {"file": str(f), "stream": len(p.stream), "heldout": len(p.heldout)}
            for f, p in zip(phase_files, phases, strict=True)
        ],
        "phase_starts": [int(s) for s in phase_starts],
        "strategies": results,
        "drift_events": drift_events,
        "first_drift_after_phase_start": _first_after(drift_events, phase_starts),
        "null_stream": null,
        "bootstrap": bootstrap,
        "settings": {
            "holdout": holdout,
            "seed": seed,
            "label_delay": label_delay,
            "label_fraction": label_fraction,
            "stream_order": "file" if keep_order else "shuffled within each phase",
            "batch": batch,
            "learner": {k: v for k, v in vars(config).items() if k != "strategy"},
        },
        "device": str(base.device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    result["plot"] = str(plot(runs, phase_starts, drift_events, out.with_suffix(".png")))
    out.write_text(json.dumps(result, indent=2, default=float))
    return result


def _stream(
    run: _Run,
    phases: list[Phase],
    stream: list[LabelledText],
    vectors: np.ndarray,
    labelled: list[bool],
    delay: int,
    batch: int,
) -> None:
    learner = run.learner
    predicted: list[str] = []
    delivered = 0
    start = 0
    for phase in phases:
        end = start + len(phase.stream)
        for i in range(start, end, batch):
            j = min(i + batch, end)
            texts = [x.text for x in stream[i:j]]
            probs = learner.classifier.predict_proba(texts)
            guesses = [learner.classifier.labels[k] for k in probs.argmax(1)]
            predicted.extend(guesses)
            run.correct.extend(g == x.label for g, x in zip(guesses, stream[i:j], strict=True))
            for event in run.monitor.update(probs, vectors[i:j]):
                run.events.append(
                    event
                )  # the monitor counts the whole stream: position is the index
                learner.drift(f"drift: {event.detector} on {event.signal}")
            # Labels of items up to j - delay have arrived by now.
            upto = max(0, j - delay)
            due = [k for k in range(delivered, upto) if labelled[k]]
            delivered = max(delivered, upto)
            run.events.extend(
                learner.observe(
                    [stream[k] for k in due], [predicted[k] for k in due], position=j - 1
                )
            )
            run.retrain_if_due(j - 1, [x.text for x in stream[max(0, j - 500) : j]])
        run.matrix.append([accuracy(learner.classifier, p.heldout) for p in phases])
        log.info("bench_phase_done", strategy=run.name, phase=phase.name, acc=run.matrix[-1])
        start = end


def _null_stream(phase: Phase, n: int, seed: int) -> list[LabelledText]:
    rng = random.Random(seed + 1)
    pool = phase.stream + phase.heldout
    out: list[LabelledText] = []
    while len(out) < n:
        chunk = list(pool)
        rng.shuffle(chunk)
        out.extend(chunk)
    return out[:n]


def _null_run(
    base: SentimentClassifier,
    config: LearnerConfig,
    items: list[LabelledText],
    vectors: np.ndarray,
    delay: int,
    batch: int,
) -> dict[str, Any]:
    """Every detector on a stream with no shift; any event is a false alarm."""
    if not items:
        return {"items": 0, "drift_events": []}
    learner = ContinualLearner(base, "v1", replace(config, strategy="frozen"))
    monitor = StreamMonitor()
    events: list[dict[str, Any]] = []
    predicted: list[str] = []
    delivered = 0
    for i in range(0, len(items), batch):
        j = min(i + batch, len(items))
        probs = base.predict_proba([x.text for x in items[i:j]])
        predicted.extend(base.labels[k] for k in probs.argmax(1))
        for e in monitor.update(probs, vectors[i:j]):
            events.append(e.as_row())
        upto = max(0, j - delay)
        due = list(range(delivered, upto))
        delivered = max(delivered, upto)
        events.extend(
            e.as_row()
            for e in learner.observe(
                [items[k] for k in due], [predicted[k] for k in due], position=j - 1
            )
        )
    return {
        "items": len(items),
        "source": "phase A (stream and held-out) shuffled, cycled",
        "drift_events": events,
    }


def _first_after(events: list[dict[str, Any]], starts: list[int]) -> list[int | None]:
    """Items from each phase start (after the first) to the first drift event in that phase."""
    out: list[int | None] = []
    bounds = [*starts[1:], None]
    for s, e in zip(starts[1:], bounds[1:], strict=True):
        hits = [
            int(ev["position"]) - int(s)
            for ev in events
            if ev["position"] >= s and (e is None or ev["position"] < e)
        ]
        out.append(min(hits) if hits else None)
    return out


def plot(
    runs: dict[str, _Run], starts: list[int], events: list[dict[str, Any]], path: Path
) -> Path:
    """Prequential accuracy (rolling 200 items) with phase starts, drift events and promotions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5), dpi=110)
    colors = {"frozen": "#7f7f7f", "naive": "#d62728", "moodwire": "#1f77b4", "joint": "#2ca02c"}
    for name, run in runs.items():
        c = np.asarray(run.correct, dtype=float)
        w = min(200, max(1, len(c) // 5))
        rolling = np.convolve(c, np.ones(w) / w, mode="valid")
        x = np.arange(w - 1, len(c))
        ax.plot(x, rolling, label=name, color=colors.get(name), lw=1.6)
        for p in run.promotions:
            k = min(max(p["position"] - (w - 1), 0), len(rolling) - 1)
            ax.plot(p["position"], rolling[k], marker="^", color=colors.get(name), ms=8)
    for s in starts[1:]:
        ax.axvline(s, color="black", ls="--", lw=1)
    for i, ev in enumerate(events):
        ax.axvline(
            ev["position"], color="orange", lw=1, alpha=0.8, label="drift event" if i == 0 else None
        )
    ax.set_xlabel("stream position (items)")
    ax.set_ylabel("prequential accuracy (rolling)")
    ax.set_title("Continual learning: phase starts (dashed), drift (orange), promotions (^)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
