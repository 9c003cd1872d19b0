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
    # Forward passes run on length-sorted micro-batches: on a CPU, padding a batch of
    # tweets to its longest member costs ~1.4x (measured at 64 vs 16); a GPU prefers
    # the whole batch at once.
    micro_batch: int | None = None

    def score(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        micro = self.micro_batch or (len(texts) if self.device.type == "cuda" else 16)
        micro = max(1, micro)
        probs = self.classifier.predict_proba(texts, batch_size=micro)
        vectors = self.embedder.embed(texts, batch_size=micro)
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
    return Scorer(
        classifier=classifier,
        embedder=embedder,
        version=version,
        micro_batch=settings.micro_batch_size,
    )
