"""One encoder pass: the shared trunk, the fused engines, the ONNX export and its checks.

On the real default encoder. The fused pass must give what the two passes give
(the classifier's probabilities and the frozen embedder's vectors); the int8
export must stay close to them, be verified with the version's files, and be
refused when it does not belong to the weights beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learner.classifier import SentimentClassifier
from learner.config import LearnerConfig
from learner.data import LabelledText
from learner.errors import ModelLoadError
from learner.loading import load_version
from learner.runtime import (
    EXPORT_CARD,
    EXPORT_FILE,
    OnnxEngine,
    TorchEngine,
    TwoPassEngine,
    engine_for,
    save_version,
    shares_trunk,
)
from learner.train import TrainConfig, fine_tune
from retrieval.embedder import FrozenEmbedder
from retrieval.encoding import SHARED_LAYERS, encoder_layers
from state.registry import Registry, VersionIntegrityError
from stream.scorer import Scorer
from stream.synthetic import labelled_headlines

TEXTS = [
    "ACME shares jump after record quarterly profit",
    "Globex misses estimates, cuts outlook; shares slide 12% premarket",
    "Initech to report results on Monday",
    "$HOOLI",
    "rt @trader: short squeeze incoming on $GME 🚀🚀",
    "Fed holds rates steady, signals two cuts later this year " * 8,
]


def _train(frozen_layers: int, seed: int = 0) -> SentimentClassifier:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    clf = SentimentClassifier.from_encoder(device="cpu", seed=seed)
    data = [LabelledText(r["text"], r["label"]) for r in labelled_headlines(48, seed=seed)]
    config = TrainConfig(epochs=1, lr=5e-4, batch_size=16, frozen_layers=frozen_layers, seed=seed)
    fine_tune(clf, data, config, progress=False)
    return clf


@pytest.fixture(scope="module")
def embedder() -> FrozenEmbedder:
    return FrozenEmbedder(device="cpu")


@pytest.fixture(scope="module")
def shared() -> SentimentClassifier:
    return _train(SHARED_LAYERS)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, shared: SentimentClassifier) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    card: dict = {"kind": "test"}
    reg.promote(reg.write_version(save_version(shared, card), card))
    return reg


def test_the_learner_default_is_the_shared_trunk() -> None:
    assert LearnerConfig().frozen_layers == SHARED_LAYERS == TrainConfig().frozen_layers


def test_training_leaves_the_shared_trunk_exactly_the_base(
    shared: SentimentClassifier, embedder: FrozenEmbedder
) -> None:
    assert shares_trunk(shared, embedder) is None
    ours, base = encoder_layers(shared.model), encoder_layers(embedder.model)
    # ... and the upper layers did learn.
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            ours[SHARED_LAYERS].parameters(), base[SHARED_LAYERS].parameters(), strict=True
        )
    ]
    assert any(moved)


def test_a_fully_trained_classifier_is_scored_in_two_passes(embedder: FrozenEmbedder) -> None:
    full = _train(0)
    assert "fine-tuned" in (shares_trunk(full, embedder) or "")
    engine = engine_for(full, embedder)
    assert isinstance(engine, TwoPassEngine)
    probs, vectors = engine.score(TEXTS, 4)
    np.testing.assert_allclose(probs, full.predict_proba(TEXTS), atol=1e-6)
    np.testing.assert_allclose(vectors, embedder.embed(TEXTS), atol=1e-6)


def test_too_many_frozen_layers_is_refused() -> None:
    clf = SentimentClassifier.from_encoder(device="cpu")
    with pytest.raises(ValueError, match="leaves nothing"):
        fine_tune(clf, [LabelledText("x", "neutral")], TrainConfig(frozen_layers=6), progress=False)


def test_the_fused_pass_gives_what_the_two_passes_give(
    shared: SentimentClassifier, embedder: FrozenEmbedder
) -> None:
    engine = engine_for(shared, embedder, runtime="torch")
    assert isinstance(engine, TorchEngine)
    probs, vectors = engine.score(TEXTS, 4)
    np.testing.assert_allclose(probs, shared.predict_proba(TEXTS), atol=1e-4)
    np.testing.assert_allclose(vectors, embedder.embed(TEXTS), atol=1e-4)


def test_a_version_carries_its_verified_int8_export(
    registry: Registry, embedder: FrozenEmbedder
) -> None:
    version = registry.serving()
    card = registry.card(version)
    assert card["runtime"]["kind"] == "onnx"
    assert card["runtime"]["space_id"] == embedder.space_id
    assert EXPORT_FILE in card["files"] and EXPORT_CARD in card["files"]
    classifier = load_version(registry, version, device="cpu")
    engine = engine_for(classifier, embedder, version=version)
    assert isinstance(engine, OnnxEngine)
    probs, vectors = engine.score(TEXTS, 4)
    reference = classifier.predict_proba(TEXTS)
    assert np.abs(probs - reference).max() < 0.1
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # The shared trunk and the embedder's layers are float32: the frozen space itself.
    np.testing.assert_allclose(vectors, embedder.embed(TEXTS), atol=1e-4)


def test_a_tampered_export_is_refused_like_tampered_weights(
    registry: Registry, tmp_path: Path
) -> None:
    copy = Registry(tmp_path / "copy")
    shutil.copytree(registry.root / "versions", copy.root / "versions")
    version = registry.serving()
    path = copy.path(version) / EXPORT_FILE
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VersionIntegrityError, match=EXPORT_FILE):
        copy.verify(version)


def test_an_export_of_other_weights_is_refused(
    registry: Registry, embedder: FrozenEmbedder, tmp_path: Path
) -> None:
    # Another classifier's weights beside this version's export, with a card that
    # matches: the checksums would pass, the agreement check must not.
    other = _train(SHARED_LAYERS, seed=5)
    # Make the disagreement unmistakable: a head that always says "negative".
    with torch.no_grad():
        other.model.classifier.weight.zero_()
        other.model.classifier.bias.copy_(torch.tensor([20.0, -20.0, -20.0]))
    directory = tmp_path / "mixed"
    other.save(directory)
    source = registry.path(registry.serving())
    for name in (EXPORT_FILE, EXPORT_CARD):
        shutil.copy(source / name, directory / name)
    mixed = SentimentClassifier.from_pretrained(directory, device="cpu")
    with pytest.raises(ModelLoadError, match="disagrees"):
        engine_for(mixed, embedder, version="mixed")
    # Without ONNX the same weights serve through the fused PyTorch pass.
    assert isinstance(engine_for(mixed, embedder, runtime="torch"), TorchEngine)


def test_an_export_for_another_space_is_not_used(
    registry: Registry, embedder: FrozenEmbedder, tmp_path: Path
) -> None:
    directory = tmp_path / "v"
    shutil.copytree(registry.path(registry.serving()), directory)
    directory.chmod(0o755)
    entry_path = directory / EXPORT_CARD
    entry_path.chmod(0o644)
    entry = json.loads(entry_path.read_text())
    entry["space_id"] = "another-encoder:0000"
    entry_path.write_text(json.dumps(entry))
    classifier = SentimentClassifier.from_pretrained(directory, device="cpu")
    assert isinstance(engine_for(classifier, embedder), TorchEngine)


def test_the_scorer_keeps_one_engine_per_classifier(
    shared: SentimentClassifier, embedder: FrozenEmbedder
) -> None:
    scorer = Scorer(classifier=shared, embedder=embedder, version="a", runtime="torch")
    first = scorer.engine
    assert scorer.engine is first
    probs, vectors = scorer.score(TEXTS)
    assert probs.shape == (len(TEXTS), 3) and vectors.shape == (len(TEXTS), embedder.dim)
    other = _train(0, seed=1)
    scorer.classifier, scorer.version = other, "b"
    assert isinstance(scorer.engine, TwoPassEngine)
    scorer.classifier, scorer.version = shared, "a"
    assert scorer.engine is first


@pytest.fixture(scope="module")
def onnx_engine(registry: Registry, embedder: FrozenEmbedder) -> tuple[OnnxEngine, Any]:
    version = registry.serving()
    classifier = load_version(registry, version, device="cpu")
    engine = engine_for(classifier, embedder, version=version)
    assert isinstance(engine, OnnxEngine)
    return engine, classifier


# Any text a feed may carry: letters of every script, emoji, controls, whitespace only,
# the empty string, markup-like runs and texts past the tokeniser's max length.
_ANY_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=300, max_size=900),
    st.sampled_from(TEXTS + ["", " ", "\x00\u202e\ufeff", "🚀" * 200, "<script>$GME</script>"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(_ANY_TEXT, min_size=1, max_size=9), micro=st.integers(1, 9))
def test_the_export_scores_any_batch_of_any_text_as_pytorch_does(
    onnx_engine: tuple[OnnxEngine, Any], embedder: FrozenEmbedder, texts: list[str], micro: int
) -> None:
    """Rows stay with their texts whatever the lengths, padding and micro-batches; every
    row is a distribution close to PyTorch's, every vector the frozen space's own."""
    engine, classifier = onnx_engine
    probs, vectors = engine.score(texts, micro)
    assert probs.shape == (len(texts), 3) and vectors.shape == (len(texts), embedder.dim)
    assert np.isfinite(probs).all() and np.isfinite(vectors).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert np.abs(probs - classifier.predict_proba(texts, batch_size=micro)).max() < 0.1
    np.testing.assert_allclose(vectors, embedder.embed(texts, batch_size=micro), atol=1e-4)
    # Each text alone gives its own row of the batch (no leak across padding or order).
    # The vectors are float32 throughout: the same to rounding. The int8 products scale
    # their inputs per call (dynamic quantisation), so a text's probabilities move a
    # little with the batch it came in (measured up to ~0.003).
    lone_probs, lone_vectors = engine.score(texts[-1:], 1)
    np.testing.assert_allclose(lone_probs[0], probs[-1], atol=0.02)
    np.testing.assert_allclose(lone_vectors[0], vectors[-1], atol=1e-4)
