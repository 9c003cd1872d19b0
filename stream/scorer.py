"""What the scoring path runs on the device: the served classifier and the frozen embedder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learner.classifier import SentimentClassifier, select_device
from learner.registry import Registry, RegistryError
from moodwire.settings import Settings
from retrieval.embedder import FrozenEmbedder


@dataclass
class Scorer:
    """Sentiment probabilities (served version) and frozen-space embeddings, per batch."""

    classifier: SentimentClassifier
    embedder: FrozenEmbedder
    version: str

    def score(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = max(1, len(texts))
        probs = self.classifier.predict_proba(texts, batch_size=n)
        vectors = self.embedder.embed(texts, batch_size=n)
        return probs, vectors

    @property
    def device(self) -> torch.device:
        return self.classifier.device


def load_serving(settings: Settings, embedder: FrozenEmbedder | None = None) -> Scorer:
    """The registry's serving version (and the frozen embedder), on the chosen device."""
    registry = Registry(settings.resolved_registry())
    version = registry.serving()
    if version is None:
        raise RegistryError(
            f"no model serves in registry {registry.root}: train one first with "
            "`moodwire bootstrap --train FILE` (or run `moodwire demo`)"
        )
    device = select_device(settings.device)
    classifier = SentimentClassifier.from_pretrained(
        registry.path(version), device=str(device), max_length=settings.max_length
    )
    if embedder is None:
        embedder = FrozenEmbedder(device=device, max_length=settings.max_length)
    return Scorer(classifier=classifier, embedder=embedder, version=version)
