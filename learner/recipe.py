"""A fine-tuning recipe chosen on the user's own data, within a time budget.

One fixed recipe fits the file it was tuned on. ``choose_recipe`` instead takes
a stratified validation split out of the training data and

- scores every epoch of every candidate on validation macro-F1, stopping a
  candidate after ``patience`` epochs without gain (small sets get more passes:
  at least ``min_steps`` optimiser steps are allowed, up to ``max_epochs``), and
  chooses the fewest epochs within one standard error of the best score (a small
  split's noisy maximum otherwise picks a long, overfitting run);
- searches the peak learning rate over a few candidates, the default first, as
  far as the time budget allows (a candidate that would not fit in what is left
  is skipped, and the card says so);
- trains the chosen recipe again on every row, the validation split included,
  with a schedule as long as the chosen checkpoint's (when the budget allows: on
  small files the rows matter, and the schedule then ends annealed);
- fits a temperature on the validation split (``learner.calibration``) and folds
  it into the model it returns.

What is frozen is not searched: the embeddings and lower layers are shared with
the frozen embedder (``TrainConfig.frozen_layers``), which is what lets scoring
run the trunk once; training them would double the cost of every scored item.
Everything the search did goes into the model card.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from learner.calibration import calibrate
from learner.classifier import SentimentClassifier
from learner.data import LabelledText, stratified_split
from learner.metrics import classification_metrics
from learner.train import TrainConfig, TrainReport, fine_tune


@dataclass(frozen=True)
class SearchConfig:
    """How much ``choose_recipe`` may try; the defaults are what ``bootstrap`` uses."""

    time_budget_s: float = 1200.0
    lrs: tuple[float, ...] = (5e-4, 1e-3, 2.5e-4)  # the first is the measured default
    val_fraction: float = 0.2
    max_val: int = 2000  # a larger split costs evaluation time and tells little more
    min_val: int = 30  # below this there is no validation split: one fixed run
    min_steps: int = 600  # small sets get at least this many steps (within max_epochs)
    min_epochs: float = 3.0
    max_epochs: float = 12.0
    patience: int = 2  # epochs without a better validation macro-F1 before stopping
    refit: bool = True  # train the chosen recipe again on every row, if the budget allows
    calibrate: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.time_budget_s > 0, "time_budget_s must be positive"),
            (len(self.lrs) >= 1 and all(lr > 0 for lr in self.lrs), "lrs must be positive"),
            (0 < self.val_fraction < 0.5, "val_fraction must be in (0, 0.5)"),
            (self.patience >= 1, "patience must be at least 1"),
            (0 < self.min_epochs <= self.max_epochs, "need 0 < min_epochs <= max_epochs"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SearchConfig: {message}")

    def epochs_for(self, n_fit: int, batch_size: int) -> float:
        """Passes allowed for ``n_fit`` examples: enough for ``min_steps``, within bounds.

        >>> s = SearchConfig()
        >>> s.epochs_for(100_000, 32), s.epochs_for(8_000, 32), s.epochs_for(800, 32)
        (3.0, 3.0, 12.0)
        """
        wanted = math.ceil(self.min_steps * batch_size / max(1, n_fit))
        return float(min(self.max_epochs, max(self.min_epochs, wanted)))


@dataclass
class _Candidate:
    lr: float
    history: list[dict] = dataclasses.field(default_factory=list)
    best_f1: float = -1.0
    best_epoch: float = 0.0
    best_state: dict[str, torch.Tensor] | None = None
    report: TrainReport | None = None
    seconds: float = 0.0
    val_probs: list[np.ndarray] = dataclasses.field(default_factory=list)  # per history row

    def record(
        self, classifier: SentimentClassifier, val: list[LabelledText], epochs_done: float
    ) -> float:
        """Score the validation split now, keep the row and the probabilities; its F1."""
        metrics, probs = _score(classifier, val)
        self.val_probs.append(probs)
        self.history.append(
            {
                "epoch": round(epochs_done, 3),
                "val_macro_f1": metrics["macro_f1"],
                "val_accuracy": metrics["accuracy"],
            }
        )
        return metrics["macro_f1"]

    def summary(self) -> dict:
        return {
            "lr": self.lr,
            "best_epoch": round(self.best_epoch, 3),
            "best_val_macro_f1": self.best_f1,
            "seconds": round(self.seconds, 1),
            "stopped_early": bool(self.report and self.report.stopped_early),
            "history": self.history,
        }


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Called inside fine_tune, where the frozen part has requires_grad off: only what
    # training changes is copied.
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _score(classifier: SentimentClassifier, val: list[LabelledText]) -> tuple[dict, np.ndarray]:
    probs = classifier.predict_proba([x.text for x in val])
    predicted = [classifier.labels[i] for i in probs.argmax(axis=1)]
    metrics = classification_metrics([x.label for x in val], predicted, labels=classifier.labels)
    return metrics, probs


def _run(
    make: Callable[[], SentimentClassifier],
    fit: list[LabelledText],
    val: list[LabelledText],
    config: TrainConfig,
    patience: int | None,
    progress: bool,
) -> tuple[SentimentClassifier, _Candidate]:
    classifier = make()
    cand = _Candidate(lr=config.lr)
    state = {"since_best": 0, "evaluated_at": -1.0}

    def on_epoch(epochs_done: float) -> bool:
        f1 = cand.record(classifier, val, epochs_done)
        state["evaluated_at"] = epochs_done
        if f1 > cand.best_f1:
            cand.best_f1, cand.best_epoch = f1, epochs_done
            cand.best_state = _trainable_state(classifier.model)
            state["since_best"] = 0
        else:
            state["since_best"] += 1
        return patience is not None and state["since_best"] >= patience

    start = time.perf_counter()
    cand.report = fine_tune(classifier, fit, config, progress=progress, on_epoch=on_epoch)
    if cand.report.samples_seen / len(fit) != state["evaluated_at"]:
        # Stopped by the clock part-way through a pass: the last state is a candidate too.
        # Its parameters are all trainable again here, so compare before copying.
        epochs_done = cand.report.samples_seen / len(fit)
        f1 = cand.record(classifier, val, epochs_done)
        if f1 > cand.best_f1:
            cand.best_f1, cand.best_epoch, cand.best_state = f1, epochs_done, None
    if cand.best_state is not None:
        _restore(classifier.model, cand.best_state)
        cand.best_state = None
    cand.seconds = time.perf_counter() - start
    return classifier, cand


def _select(candidates: list[_Candidate], n_val: int) -> tuple[tuple[_Candidate, int], dict]:
    """The (candidate, history row) to train again: the one-standard-error rule.

    Of every (learning rate, epoch) point scored, those within one standard error of
    the best validation macro-F1 are as good as the split can tell; the fewest epochs
    among them is chosen (then the earlier candidate: the default learning rate comes
    first). A small split's noisy maximum would otherwise pick a long, overfitting run.

    >>> a = _Candidate(5e-4, history=[{"epoch": 1.0, "val_macro_f1": 0.70},
    ...                               {"epoch": 2.0, "val_macro_f1": 0.80}])
    >>> b = _Candidate(1e-3, history=[{"epoch": 1.0, "val_macro_f1": 0.79},
    ...                               {"epoch": 8.0, "val_macro_f1": 0.82}])
    >>> (cand, row), sel = _select([a, b], n_val=200)
    >>> cand.lr, cand.history[row]["epoch"], round(sel["threshold"], 3)
    (0.0005, 2.0, 0.793)
    """
    points = [(c, i) for c in candidates for i in range(len(c.history))]
    best_f1 = max(c.history[i]["val_macro_f1"] for c, i in points)
    se = math.sqrt(max(best_f1 * (1.0 - best_f1), 0.0) / max(1, n_val))
    eligible = [(c, i) for c, i in points if c.history[i]["val_macro_f1"] >= best_f1 - se]
    order = {id(c): k for k, c in enumerate(candidates)}
    pick = min(eligible, key=lambda ci: (ci[0].history[ci[1]]["epoch"], order[id(ci[0])]))
    return pick, {
        "rule": "fewest epochs within one standard error of the best validation macro-F1",
        "best_val_macro_f1": best_f1,
        "standard_error": se,
        "threshold": best_f1 - se,
    }


def choose_recipe(
    make: Callable[[], SentimentClassifier],
    data: list[LabelledText],
    base: TrainConfig | None = None,
    search: SearchConfig | None = None,
    *,
    fixed_lr: bool = False,
    fixed_epochs: bool = False,
    seed: int = 0,
    progress: bool = True,
    log: Callable[..., None] | None = None,
) -> tuple[SentimentClassifier, TrainReport, dict]:
    """Train on ``data`` with the best recipe found in the budget; (model, its run, card).

    ``make()`` gives a fresh, seeded classifier for each candidate. ``fixed_lr`` and
    ``fixed_epochs`` (the user chose them) take those out of the search: a fixed
    epoch count trains exactly that long and keeps the last state.
    """
    if not data:
        raise ValueError("choose_recipe needs at least one labelled example")
    base = base if base is not None else TrainConfig()
    search = search if search is not None else SearchConfig()
    started = time.perf_counter()
    fraction = min(search.val_fraction, search.max_val / len(data))
    n_val_expected = round(len(data) * fraction)
    if n_val_expected < search.min_val or len(data) - n_val_expected < search.min_val:
        classifier = make()
        report = fine_tune(classifier, data, base, progress=progress)
        card = {
            "search": "none: too few rows for a validation split",
            "n_fit": len(data),
            "n_val": 0,
            "chosen": {"lr": base.lr, "epochs": report.epochs_done},
        }
        return classifier, report, card

    fit, val = stratified_split(data, fraction, seed=seed)
    epochs = base.epochs if fixed_epochs else search.epochs_for(len(fit), base.batch_size)
    lrs = (base.lr,) if fixed_lr else search.lrs
    patience = None if fixed_epochs else search.patience

    best: tuple[SentimentClassifier, _Candidate] | None = None
    tried: list[dict] = []
    every: list[_Candidate] = []
    skipped: list[dict] = []
    per_epoch_s: float | None = None
    for lr in lrs:
        remaining = search.time_budget_s - (time.perf_counter() - started)
        if best is not None:
            # What this candidate would need: as many passes as the best one took to
            # stop (or to finish), at the measured time per pass with its evaluation.
            needed = per_epoch_s * max(1.0, best[1].history[-1]["epoch"])
            if needed > remaining:
                skipped.append(
                    {"lr": lr, "needed_s": round(needed, 1), "left_s": round(remaining, 1)}
                )
                continue
        config = dataclasses.replace(base, lr=lr, epochs=epochs, time_budget_s=remaining)
        classifier, cand = _run(make, fit, val, config, patience, progress)
        if log is not None:
            log("recipe_candidate", lr=lr, best_epoch=cand.best_epoch, val_macro_f1=cand.best_f1)
        tried.append(cand.summary())
        every.append(cand)
        done = cand.history[-1]["epoch"] if cand.history else 0.0
        if per_epoch_s is None and done > 0:
            per_epoch_s = cand.seconds / done
        if best is None or cand.best_f1 > best[1].best_f1:
            best = (classifier, cand)
        else:
            del classifier
    assert best is not None  # the first candidate always runs
    classifier, best_cand = best
    candidates = [c for c in every if c.history]
    pick, selection = _select(candidates, len(val))
    chosen, row = pick

    card: dict = {
        "search": "learning rate, and epochs by early stopping on validation macro-F1",
        "n_fit": len(fit),
        "n_val": len(val),
        "max_epochs": epochs,
        "patience": patience,
        "time_budget_s": search.time_budget_s,
        "candidates": tried,
        "skipped_for_time": skipped,
        "selection": selection,
        "chosen": {"lr": chosen.lr, "epochs": chosen.history[row]["epoch"]},
        "val": {
            "accuracy": chosen.history[row]["val_accuracy"],
            "macro_f1": chosen.history[row]["val_macro_f1"],
            "n": len(val),
        },
    }
    val_probs = chosen.val_probs[row]
    report = best_cand.report
    assert report is not None
    refitted = False
    if search.refit:
        # The chosen recipe again, on every row (the validation split too) and with a
        # schedule that ends where the chosen point stood: on small files a fifth of the
        # rows and an annealed end are worth more than any checkpoint of the search.
        refit_epochs = float(max(1, math.ceil(chosen.history[row]["epoch"] - 1e-9)))
        remaining = search.time_budget_s - (time.perf_counter() - started)
        needed = (per_epoch_s or 0.0) * refit_epochs * len(data) / len(fit)
        if needed <= remaining:
            final = make()
            config = dataclasses.replace(
                base, lr=chosen.lr, epochs=refit_epochs, time_budget_s=remaining
            )
            report = fine_tune(final, data, config, progress=progress)
            del classifier
            classifier, refitted = final, True
            card["refit"] = {
                "rows": len(data), "epochs": refit_epochs, "seconds": round(report.seconds, 1)
            }  # fmt: skip
            card["chosen"]["epochs"] = refit_epochs
        else:
            card["refit"] = {
                "skipped_for_time": True, "needed_s": round(needed, 1), "left_s": round(remaining, 1)
            }  # fmt: skip
    if not refitted:
        # No time to train again: the search's best checkpoint serves, as it scored.
        best_row = best_cand.history.index(max(best_cand.history, key=lambda h: h["val_macro_f1"]))
        val_probs = best_cand.val_probs[best_row]
        card["chosen"] = {"lr": best_cand.lr, "epochs": best_cand.history[best_row]["epoch"]}
        card["val"] = {
            "accuracy": best_cand.history[best_row]["val_accuracy"],
            "macro_f1": best_cand.history[best_row]["val_macro_f1"],
            "n": len(val),
        }
    if search.calibrate:
        # Fitted on what the selected checkpoint said about the validation rows (the refit
        # model has trained on them), and folded into the model that is returned.
        # predict_proba's columns are in ``classifier.labels`` order.
        y = np.asarray([list(classifier.labels).index(x.label) for x in val])
        card["calibration"] = {
            **calibrate(classifier, val_probs, y),
            "fitted_on": "the validation split, as the search scored it at the chosen point",
        }
    card["seconds"] = round(time.perf_counter() - started, 1)
    return classifier, report, card
