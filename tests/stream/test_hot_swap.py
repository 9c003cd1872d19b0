"""Hot swap of the serving model: a real registry, real (tiny) saved classifiers.

The classifiers are one-layer BERTs with the default tokenizer, so saving and
loading them takes milliseconds; what is tested is which version serves.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from transformers import BertConfig

from learner.classifier import (
    BertMeanPoolForSequenceClassification,
    SentimentClassifier,
    default_encoder_path,
)
from learner.data import LABELS
from retrieval.embedder import FrozenEmbedder
from state.registry import Registry
from stream import scorer as scorer_module
from stream.scorer import Scorer, ServingWatcher

TEXTS = ["ACME beats estimates", "Globex cuts outlook", "Initech to report on Monday"]


def _tiny_classifier(seed: int) -> SentimentClassifier:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    torch.manual_seed(seed)
    model = BertMeanPoolForSequenceClassification(config)
    return SentimentClassifier(model, tokenizer, device=torch.device("cpu"), max_length=32)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different tiny classifiers, saved once for the module."""
    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        _tiny_classifier(seed).save(root / name)
        out[name] = root / name
    return out


def _add_version(registry: Registry, source: Path) -> str:
    """A new registry version holding a copy of ``source``'s model files."""
    return registry.write_version(
        lambda d: shutil.copytree(
            source, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("card.json")
        ),
        {"kind": "test"},
    )


@pytest.fixture
def registry(tmp_path: Path, saved_models: dict[str, Path]) -> Registry:
    """v1 (model a) serving, v2 (model b) written but not promoted."""
    reg = Registry(tmp_path / "registry")
    assert _add_version(reg, saved_models["a"]) == "v1"
    assert _add_version(reg, saved_models["b"]) == "v2"
    reg.promote("v1")
    return reg


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the watcher loads a classifier from."""
    seen: list[Path] = []
    real = SentimentClassifier.from_pretrained

    def counting(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(scorer_module.SentimentClassifier, "from_pretrained", counting)
    return seen


def _serving_scorer(registry: Registry) -> Scorer:
    version = registry.serving()
    assert version is not None
    classifier = SentimentClassifier.from_pretrained(
        registry.path(version), device="cpu", max_length=32
    )
    # The watcher swaps the classifier (and builds its engine with the frozen embedder).
    return Scorer(classifier=classifier, embedder=_embedder(), version=version)


@functools.cache
def _embedder() -> FrozenEmbedder:
    return FrozenEmbedder(device="cpu", max_length=32)


def _probs(registry: Registry, version: str) -> np.ndarray:
    return SentimentClassifier.from_pretrained(registry.path(version), device="cpu").predict_proba(
        TEXTS
    )


def test_an_unmoved_pointer_costs_a_stat_and_loads_nothing(
    registry: Registry, loads: list[Path]
) -> None:
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    loads.clear()
    before = scorer.classifier
    for _ in range(3):
        assert watcher.refresh(scorer) is None
    assert loads == [] and scorer.classifier is before and scorer.version == "v1"
    # Re-promoting the serving version moves the pointer but changes nothing.
    registry.promote("v1")
    assert watcher.moved()
    assert watcher.refresh(scorer) is None and not watcher.moved()
    assert loads == [] and scorer.classifier is before


def test_promote_swaps_and_rollback_comes_back_from_the_cache(
    registry: Registry, loads: list[Path]
) -> None:
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    loads.clear()
    v1 = scorer.classifier

    registry.promote("v2")
    with capture_logs() as logs:
        swap = watcher.refresh(scorer)
    assert swap is not None and (swap.previous, swap.version, swap.cached) == ("v1", "v2", False)
    assert scorer.version == "v2" and loads == [registry.path("v2")]
    np.testing.assert_allclose(scorer.classifier.predict_proba(TEXTS), _probs(registry, "v2"))
    assert not np.allclose(_probs(registry, "v1"), _probs(registry, "v2"))
    swapped = [e for e in logs if e["event"] == "model_swapped"]
    assert swapped and swapped[0]["from"] == "v1" and swapped[0]["to"] == "v2"
    assert swapped[0]["load_s"] >= 0
    assert scorer.classifier.max_length == v1.max_length  # the serving settings carry over

    loads.clear()
    registry.rollback()
    swap = watcher.refresh(scorer)
    assert swap is not None and (swap.previous, swap.version, swap.cached) == ("v2", "v1", True)
    assert scorer.version == "v1" and scorer.classifier is v1 and loads == []
    assert watcher.refresh(scorer) is None


def test_the_cache_keeps_the_last_two_versions(
    registry: Registry, saved_models: dict[str, Path], loads: list[Path]
) -> None:
    v3 = _add_version(registry, saved_models["a"])
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    for version in ("v2", v3):
        registry.promote(version)
        assert watcher.refresh(scorer) is not None
    assert watcher.cached_versions() == ["v2", v3]
    loads.clear()
    registry.promote("v1")  # evicted: loaded again
    swap = watcher.refresh(scorer)
    assert swap is not None and not swap.cached and loads == [registry.path("v1")]
    assert watcher.cached_versions() == [v3, "v1"]


def _corrupt_version(registry: Registry, source: Path) -> str:
    def save(d: Path) -> None:
        shutil.copy(source / "config.json", d / "config.json")
        (d / "model.safetensors").write_bytes(b"\x00not safetensors at all")

    return registry.write_version(save, {"kind": "broken"})


def test_a_version_that_cannot_load_keeps_the_old_one_serving_and_is_not_retried(
    registry: Registry, saved_models: dict[str, Path], loads: list[Path]
) -> None:
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    before = scorer.classifier
    loads.clear()
    broken = _corrupt_version(registry, saved_models["a"])
    registry.promote(broken)
    with capture_logs() as logs:
        assert watcher.refresh(scorer) is None
        assert watcher.refresh(scorer) is None  # the same pointer: no second attempt
    assert scorer.version == "v1" and scorer.classifier is before
    assert loads == [registry.path(broken)]
    refused = [e for e in logs if e["event"] == "model_swap_refused"]
    assert len(refused) == 1 and refused[0]["serving"] == "v1"
    assert refused[0]["version"] == broken and "does not load" in refused[0]["reason"]
    assert refused[0]["log_level"] == "error"

    registry.promote("v2")  # the operator fixes it: the next refresh follows
    swap = watcher.refresh(scorer)
    assert swap is not None and scorer.version == "v2"


def test_a_pointer_to_a_missing_version_keeps_the_old_one_serving(registry: Registry) -> None:
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    pointer = registry.root / "serving.json"
    state = json.loads(pointer.read_text())
    # Written by hand, atomically (the registry itself refuses to promote a missing version).
    (registry.root / "edited.json").write_text(json.dumps({**state, "version": "v9"}))
    os.replace(registry.root / "edited.json", pointer)
    with capture_logs() as logs:
        assert watcher.refresh(scorer) is None
    assert scorer.version == "v1"
    (refused,) = [e for e in logs if e["event"] == "model_swap_refused"]
    assert "v9" in refused["reason"] and str(pointer) in refused["reason"]


def _refused_swaps() -> float:
    return REGISTRY.get_sample_value("moodwire_model_swaps_total", {"outcome": "refused"}) or 0.0


def _flip_a_byte(path: Path) -> None:
    """One byte of the tensor data (past the safetensors header): the file still loads."""
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_a_tampered_version_is_refused_and_the_old_one_keeps_serving(
    registry: Registry, saved_models: dict[str, Path], loads: list[Path]
) -> None:
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    before, counted = scorer.classifier, _refused_swaps()
    loads.clear()
    registry.promote("v2")  # verified when promoted, tampered afterwards
    _flip_a_byte(registry.path("v2") / "model.safetensors")
    # It would load: what stops it is the checksum.
    SentimentClassifier.from_pretrained(registry.path("v2"), device="cpu")
    loads.clear()
    with capture_logs() as logs:
        assert watcher.refresh(scorer) is None
        assert watcher.refresh(scorer) is None  # the same pointer: not tried again
    assert scorer.version == "v1" and scorer.classifier is before and loads == []
    (refused,) = [e for e in logs if e["event"] == "model_swap_refused"]
    assert refused["version"] == "v2" and refused["serving"] == "v1"
    assert "version v2 refused: model.safetensors has changed" in refused["reason"]
    assert _refused_swaps() == counted + 1

    v3 = _add_version(registry, saved_models["b"])  # a good one: the next refresh follows
    registry.promote(v3)
    swap = watcher.refresh(scorer)
    assert swap is not None and scorer.version == v3


def test_a_version_with_nan_weights_is_refused_by_the_smoke_batch(registry: Registry) -> None:
    nan = _tiny_classifier(2)
    with torch.no_grad():
        nan.model.classifier.weight.fill_(float("nan"))
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    version = registry.write_version(nan.save, {"kind": "test"})
    registry.promote(version)  # its checksums are right: only the smoke batch can tell
    with capture_logs() as logs:
        assert watcher.refresh(scorer) is None
    assert scorer.version == "v1"
    (refused,) = [e for e in logs if e["event"] == "model_swap_refused"]
    assert refused["version"] == version and "non-finite" in refused["reason"]


def test_a_garbage_pointer_keeps_the_old_one_serving(registry: Registry) -> None:
    watcher = ServingWatcher(registry)
    scorer = _serving_scorer(registry)
    pointer = registry.serving_file
    (registry.root / "edited.json").write_text("{half a json")
    os.replace(registry.root / "edited.json", pointer)
    counted = _refused_swaps()
    with capture_logs() as logs:
        assert watcher.refresh(scorer) is None
    assert scorer.version == "v1"
    (refused,) = [e for e in logs if e["event"] == "model_swap_refused"]
    assert refused["version"] is None and str(pointer) in refused["reason"]
    assert "not valid JSON" in refused["reason"] and _refused_swaps() == counted + 1


def test_a_registry_without_a_pointer_is_left_alone(tmp_path: Path) -> None:
    watcher = ServingWatcher(Registry(tmp_path / "nowhere"))
    assert not watcher.moved()
    assert watcher.refresh(scorer=None) is None  # type: ignore[arg-type]
