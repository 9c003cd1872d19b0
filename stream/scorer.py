"""What the scoring path runs on the device: the served classifier and the frozen embedder.

The served classifier changes only between batches, when the registry's serving
pointer moves (:class:`ServingWatcher`); the frozen embedder never changes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch
from prometheus_client import Counter

from learner.classifier import SentimentClassifier, select_device
from learner.errors import ModelLoadError
from learner.loading import load_version
from learner.runtime import Engine, engine_for
from retrieval.embedder import FrozenEmbedder
from state.registry import Registry, RegistryError
from state.shared_registry import AnyRegistry

log = structlog.get_logger(__name__)

# Engines kept: the serving one, the one before it (an instant rollback) and one more.
_ENGINES_KEPT = 3

MODEL_SWAPS = Counter(
    "moodwire_model_swaps_total", "Serving-model changes seen by the worker", ["outcome"]
)


@dataclass
class Scorer:
    """Sentiment probabilities (served version) and frozen-space embeddings, per batch.

    Both come from one engine (:func:`learner.runtime.engine_for`): one pass through
    the trunk the classifier shares with the frozen embedder, on ONNX Runtime where
    the version carries its ONNX export; two passes for a classifier that shares
    nothing. Engines are built once per classifier and kept for the last few.
    """

    classifier: SentimentClassifier
    embedder: FrozenEmbedder
    version: str
    # Forward passes run on length-sorted micro-batches: on a CPU, padding a batch of
    # tweets to its longest member costs ~1.4x (measured at 64 vs 16); a GPU prefers
    # the whole batch at once.
    micro_batch: int | None = None
    runtime: str = "auto"
    _engines: OrderedDict[int, tuple[SentimentClassifier, Engine]] = field(
        default_factory=OrderedDict, repr=False
    )

    def prepare(self, classifier: SentimentClassifier, version: str) -> Engine:
        """The engine for ``classifier`` (built now if new); raises if its export is refused."""
        key = id(classifier)
        held = self._engines.get(key)
        if held is None or held[0] is not classifier:
            held = (
                classifier,
                engine_for(classifier, self.embedder, version=version, runtime=self.runtime),
            )
            self._engines[key] = held
            log.info("scoring_engine", version=version, engine=held[1].kind)
        self._engines.move_to_end(key)
        while len(self._engines) > _ENGINES_KEPT:
            self._engines.popitem(last=False)
        return held[1]

    @property
    def engine(self) -> Engine:
        return self.prepare(self.classifier, self.version)

    def score(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        micro = self.micro_batch or (len(texts) if self.device.type == "cuda" else 16)
        return self.engine.score(texts, max(1, micro))

    @property
    def device(self) -> torch.device:
        return self.classifier.device


def load_serving(
    registry_root: Path | AnyRegistry,
    *,
    device: str = "auto",
    max_length: int = 128,
    micro_batch: int | None = None,
    embedder: FrozenEmbedder | None = None,
    runtime: str = "auto",
) -> Scorer:
    """The registry's serving version (and the frozen embedder), on the chosen device.

    The version is verified and smoke-tested first (:func:`~learner.loading.load_version`):
    a refused one raises :class:`RegistryError` or :class:`ModelLoadError`.
    """
    registry = registry_root if hasattr(registry_root, "serving") else Registry(registry_root)
    version = registry.serving()
    if version is None:
        raise RegistryError(
            f"no model serves in registry {registry.root}: train one first with "
            "`moodwire bootstrap --train FILE` (or run `moodwire demo`)"
        )
    chosen = select_device(device)
    classifier = load_version(registry, version, device=str(chosen), max_length=max_length)
    if embedder is None:
        embedder = FrozenEmbedder(device=chosen, max_length=max_length)
    scorer = Scorer(
        classifier=classifier,
        embedder=embedder,
        version=version,
        micro_batch=micro_batch,
        runtime=runtime,
    )
    scorer.prepare(classifier, version)  # an export that disagrees with its weights is refused
    return scorer


# What identifies one write of the serving pointer (Registry.pointer_token): the local
# file's inode, mtime and size, or the shared registry's generation.
_Pointer = object


@dataclass(frozen=True)
class ModelSwap:
    """One change of the served classifier."""

    previous: str
    version: str
    load_s: float
    cached: bool


class ServingWatcher:
    """Keeps a :class:`Scorer` on the registry's serving version, swapping between batches.

    :meth:`refresh` costs one ``os.stat`` (a local registry) or one indexed read (a
    shared one, :class:`~state.shared_registry.SharedRegistry`) while the pointer stays put.
    When it moved, the new version is loaded synchronously (on the scorer's
    device) and swapped in; the last ``keep`` classifiers stay loaded, so a
    rollback to the previous one is instant. A version is verified and
    smoke-tested before it serves (:func:`~learner.loading.load_version`); one
    that is refused (tampered, unloadable, non-finite outputs, or a malformed
    pointer) is logged as ``model_swap_refused`` and the old one keeps serving;
    it is not retried until the pointer moves again. (A version held in the
    cache was verified when it was loaded.) The pointer's state is taken when
    the watcher is built, so build it *before* loading the scorer: a promotion
    in between is then seen at the first refresh.

    >>> import tempfile
    >>> registry = Registry(tempfile.mkdtemp())
    >>> watcher = ServingWatcher(registry)
    >>> watcher.moved()
    False
    >>> registry.promote(registry.write_version(lambda d: None, {"kind": "example"}))
    >>> watcher.moved()
    True
    """

    def __init__(self, registry: AnyRegistry, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.registry = registry
        self.keep = keep
        self._seen = self._pointer()
        self._cache: OrderedDict[str, SentimentClassifier] = OrderedDict()

    def _pointer(self) -> _Pointer:
        return self.registry.pointer_token()

    def moved(self) -> bool:
        """Whether the serving pointer was written since the last refresh (or construction)."""
        return self._pointer() != self._seen

    def cached_versions(self) -> list[str]:
        """Versions whose classifier is held, least recently served first."""
        return list(self._cache)

    def refresh(self, scorer: Scorer) -> ModelSwap | None:
        """Serve the registry's serving version in ``scorer``; the swap, if there was one.

        Call it between batches only: a batch is scored by one version throughout.
        """
        pointer = self._pointer()
        if pointer == self._seen:
            return None
        # Stat before reading: a write after the stat is seen by the next refresh.
        self._seen = pointer
        previous = scorer.version
        t0 = time.perf_counter()
        version: str | None = None
        try:
            version = self.registry.serving()
            if version is None:
                raise RegistryError(f"no version serves in registry {self.registry.root}")
            if version == previous:
                return None
            classifier = self._cache.get(version)
            cached = classifier is not None
            if classifier is None:
                classifier = load_version(
                    self.registry,
                    version,
                    device=str(scorer.device),
                    max_length=scorer.classifier.max_length,
                )
            scorer.prepare(classifier, version)
        except (RegistryError, ModelLoadError) as exc:
            # Refused: the pointer or the version is not fit to serve.
            MODEL_SWAPS.labels("refused").inc()
            log.error(
                "model_swap_refused",
                version=version,
                serving=previous,
                registry=str(self.registry.root),
                reason=str(exc),
            )
            return None
        except Exception as exc:  # noqa: BLE001 - any load failure keeps the old version serving
            MODEL_SWAPS.labels("failed").inc()
            log.error(
                "model_swap_failed",
                serving=previous,
                registry=str(self.registry.root),
                error=f"{type(exc).__name__}: {exc}",
            )
            return None
        self._cache[previous] = scorer.classifier
        self._cache[version] = classifier
        self._cache.move_to_end(version)
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        scorer.classifier, scorer.version = classifier, version
        swap = ModelSwap(previous, version, round(time.perf_counter() - t0, 3), cached)
        MODEL_SWAPS.labels("swapped").inc()
        log.info(
            "model_swapped",
            **{"from": previous, "to": version},
            load_s=swap.load_s,
            cached=cached,
        )
        return swap
