"""The recipe search on a real (small) model: best checkpoint kept, budget kept, card true."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.calibration import expected_calibration_error
from learner.classifier import SentimentClassifier
from learner.data import LabelledText, stratified_split
from learner.metrics import classification_metrics
from learner.recipe import SearchConfig, choose_recipe
from learner.train import TrainConfig
from stream.synthetic import labelled_headlines


@pytest.fixture(scope="module")
def data() -> list[LabelledText]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return [LabelledText(r["text"], r["label"]) for r in labelled_headlines(300, seed=5)]


def make() -> SentimentClassifier:
    return SentimentClassifier.from_encoder(device="cpu", max_length=32, seed=0)


BASE = TrainConfig(batch_size=16, max_length=32)


def test_the_search_keeps_the_best_checkpoint_and_records_every_candidate(
    data: list[LabelledText],
) -> None:
    search = SearchConfig(
        lrs=(5e-4, 1e-3), min_epochs=1, max_epochs=3, patience=2, val_fraction=0.2,
        calibrate=False, refit=False,
    )  # fmt: skip
    clf, report, card = choose_recipe(make, data, BASE, search, progress=False)
    assert card["n_fit"] + card["n_val"] == len(data) and card["n_val"] == 60
    lrs = [c["lr"] for c in card["candidates"]]
    assert lrs == [5e-4, 1e-3] and not card["skipped_for_time"]
    best = max(card["candidates"], key=lambda c: c["best_val_macro_f1"])
    assert card["chosen"]["lr"] == best["lr"]
    for cand in card["candidates"]:
        scores = [h["val_macro_f1"] for h in cand["history"]]
        assert cand["best_val_macro_f1"] == max(scores)
        assert len(scores) <= 3
    # The model returned is the best epoch's, not the last one's: scoring the split again
    # gives exactly the recorded best (the split is the first n_val by the seeded split).
    assert card["val"]["macro_f1"] == pytest.approx(best["best_val_macro_f1"], abs=1e-12)
    assert report.samples_seen > 0


def test_early_stopping_stops_after_patience_without_gain(data: list[LabelledText]) -> None:
    # A learning rate this high wrecks the upper layers: no epoch after the first beats it.
    search = SearchConfig(lrs=(5e-2,), min_epochs=6, max_epochs=6, patience=1, calibrate=False)
    _, report, card = choose_recipe(make, data, BASE, search, progress=False)
    history = [h["val_macro_f1"] for h in card["candidates"][0]["history"]]
    best_at = history.index(max(history))
    assert len(history) <= best_at + 2  # patience 1: one epoch without gain, then stop
    if len(history) < 6:
        assert card["candidates"][0]["stopped_early"]
    assert report.epochs_done == math.ceil(card["chosen"]["epochs"])  # the refit's run


def test_a_candidate_that_would_not_fit_the_budget_is_skipped(data: list[LabelledText]) -> None:
    # Fifty passes cannot end in 4 s: the clock stops the first, nothing is left after it.
    search = SearchConfig(
        lrs=(5e-4, 1e-3, 2.5e-4), min_epochs=50, max_epochs=50, patience=50, time_budget_s=4.0
    )
    _, report, card = choose_recipe(make, data, BASE, search, progress=False)
    assert len(card["candidates"]) == 1 and card["candidates"][0]["stopped_early"]
    assert [s["lr"] for s in card["skipped_for_time"]] == [1e-3, 2.5e-4]
    assert card["refit"]["skipped_for_time"] is True
    assert report.epochs_done < 50
    assert card["seconds"] < 4.0 + 30  # one run stopped by the clock, plus its evaluations


def test_fixed_lr_and_epochs_train_exactly_as_told(data: list[LabelledText]) -> None:
    config = TrainConfig(batch_size=16, max_length=32, lr=3e-4, epochs=2)
    _, report, card = choose_recipe(
        make, data, config, SearchConfig(), fixed_lr=True, fixed_epochs=True, progress=False
    )
    assert [c["lr"] for c in card["candidates"]] == [3e-4]
    assert report.epochs_done == pytest.approx(2.0) and card["patience"] is None
    cal = card["calibration"]
    assert cal["temperature"] > 0 and cal["n"] == card["n_val"]


def test_too_few_rows_train_once_without_a_split() -> None:
    rows = [LabelledText(r["text"], r["label"]) for r in labelled_headlines(40, seed=1)]
    _, report, card = choose_recipe(
        make, rows, TrainConfig(batch_size=16, max_length=32, epochs=1), progress=False
    )
    assert card["n_val"] == 0 and report.samples_seen == 40


def test_calibration_in_the_search_changes_no_label(data: list[LabelledText]) -> None:
    search = SearchConfig(lrs=(5e-4,), min_epochs=2, max_epochs=2, val_fraction=0.2, refit=False)
    clf, _, card = choose_recipe(make, data, BASE, search, progress=False)
    _, val = stratified_split(data, 0.2, seed=0)  # the split the search took
    labels = list(clf.labels)
    probs = clf.predict_proba([x.text for x in val])
    predicted = [labels[i] for i in probs.argmax(1)]
    after = classification_metrics([x.label for x in val], predicted, labels=labels)
    # Scored before the temperature was folded in; the same labels after it.
    assert after["accuracy"] == card["val"]["accuracy"]
    cal = card["calibration"]
    y = np.asarray([labels.index(x.label) for x in val])
    assert expected_calibration_error(probs, y) == pytest.approx(cal["ece_after"], abs=1e-4)
    assert cal["nll_after"] <= cal["nll_before"] + 1e-12


def test_the_chosen_recipe_is_refitted_on_every_row(data: list[LabelledText]) -> None:
    search = SearchConfig(lrs=(5e-4, 1e-3), min_epochs=3, max_epochs=3, patience=3)
    clf, report, card = choose_recipe(make, data, BASE, search, progress=False)
    # The one-standard-error rule: the fewest epochs scoring within one SE of the best.
    sel = card["selection"]
    points = [(c["lr"], h["epoch"], h["val_macro_f1"]) for c in card["candidates"]
              for h in c["history"]]  # fmt: skip
    assert sel["best_val_macro_f1"] == max(f for _, _, f in points)
    assert sel["standard_error"] == pytest.approx(
        math.sqrt(sel["best_val_macro_f1"] * (1 - sel["best_val_macro_f1"]) / card["n_val"])
    )
    eligible = [(e, lr) for lr, e, f in points if f >= sel["threshold"]]
    fewest = min(e for e, _ in eligible)
    assert card["refit"]["rows"] == len(data) and card["refit"]["epochs"] == math.ceil(fewest)
    assert card["chosen"]["lr"] == next(lr for e, lr in eligible if e == fewest)
    assert report.samples_seen == len(data) * math.ceil(fewest)  # the refit's run, all rows
    # The temperature fitted on the search's validation scores is folded into it.
    assert card["calibration"]["temperature"] > 0
    probs = clf.predict_proba([x.text for x in data[:5]])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
