"""Zero-shot topics by similarity in the frozen embedding space.

Each topic of a :class:`Taxonomy` has a prototype: the normalised mean of the
embeddings of its description and examples. An item takes the topic of its
nearest prototype, or ``"other"`` when it is close to none of them. Analysts'
corrections are added to the prototypes, so the model sharpens without
training.

>>> taxonomy = Taxonomy.from_records([
...     {"name": "earnings", "description": "quarterly results"},
...     {"name": "markets", "examples": ["stocks rally", "futures slide"]},
... ])
>>> model = TopicModel(taxonomy, toy_embed, min_similarity=0.5)
>>> model.assign(toy_embed(["quarterly results beat", "weather report"]))  # doctest: +ELLIPSIS
[('earnings', 0.816...), ('other', 0.0)]
>>> model.topic_names()
['earnings', 'markets', 'other']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from stream.errors import ConfigFileError, load_yaml_list, shown

OTHER = "other"
_DEFAULT_PATH = "defaults/topics.yaml"
# Every description and example is embedded when a model is built, so the file
# size bounds that work; a name is a label on pages and in the store.
MAX_FILE_BYTES = 1024 * 1024
MAX_TOPICS = 1_000
MAX_NAME_CHARS = 100

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Topic:
    name: str
    description: str = ""
    examples: tuple[str, ...] = ()


class Taxonomy:
    """An ordered set of topics, each with a description and/or examples.

    >>> Taxonomy.default().names()[:2]
    ['earnings', 'mergers_acquisitions']
    """

    def __init__(self, topics: Iterable[Topic]) -> None:
        self.topics: tuple[Topic, ...] = tuple(topics)
        names = [t.name for t in self.topics]
        if not names:
            raise ValueError("a taxonomy needs at least one topic")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate topic names in {names}")
        if OTHER in names:
            raise ValueError(f"{OTHER!r} is reserved for items that fit no topic")

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any]], source: str = "<records>"
    ) -> Taxonomy:
        """Build from mappings with ``name``, ``description`` and ``examples``.

        Errors are :class:`~stream.errors.ConfigFileError` naming ``source``,
        the 1-based entry number and the topic.
        """
        topics: list[Topic] = []
        seen: set[str] = set()
        for i, record in enumerate(records, start=1):
            if i > MAX_TOPICS:
                raise ConfigFileError(
                    f"{source}: entry {i}: more than {MAX_TOPICS:,} topics; "
                    "a taxonomy this big is refused"
                )
            topic = _topic(record, f"{source}: entry {i}")
            if topic.name in seen:
                raise ConfigFileError(f"{source}: entry {i}: duplicate topic {topic.name!r}")
            seen.add(topic.name)
            topics.append(topic)
        if not topics:
            raise ConfigFileError(f"{source}: no topics")
        return cls(topics)

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        """Read a YAML file: a list of topics, or a mapping ``{topics: [...]}``.

        Every problem is a :class:`~stream.errors.ConfigFileError` naming the
        file and the entry; files over ``MAX_FILE_BYTES`` and YAML aliases are
        refused.
        """
        path = Path(path)
        records = load_yaml_list(path, "topics", "topics", "taxonomy", MAX_FILE_BYTES)
        return cls.from_records(records, source=str(path))

    @classmethod
    def default(cls) -> Taxonomy:
        """The shipped taxonomy (``stream/defaults/topics.yaml``)."""
        with resources.as_file(resources.files("stream").joinpath(_DEFAULT_PATH)) as path:
            return cls.load(path)

    def names(self) -> list[str]:
        return [t.name for t in self.topics]

    def __len__(self) -> int:
        return len(self.topics)

    def __repr__(self) -> str:
        return f"Taxonomy({self.names()})"


class TopicModel:
    """Nearest-prototype topics for precomputed, L2-normalised embeddings.

    ``embed`` maps texts to L2-normalised float32 rows (in production
    ``FrozenEmbedder(...).embed``); it is called once, for the taxonomy's
    texts. An item whose best cosine is below ``min_similarity``, or beats the
    runner-up by less than ``min_margin``, is ``"other"``: a topic is given only
    when an item is close enough to one, and clearly closer to it than to any
    other. The defaults were chosen on the shipped taxonomy and all-MiniLM-L6-v2
    by hand-checked precision on real financial news and stock tweets and on
    the demo's generated feed (see the README's "Alerts" section). Each
    correction counts ``correction_weight`` times as much as one seed example.
    """

    def __init__(
        self,
        taxonomy: Taxonomy,
        embed: Embed,
        *,
        min_similarity: float = 0.30,
        min_margin: float = 0.05,
        correction_weight: float = 1.0,
    ) -> None:
        if correction_weight <= 0:
            raise ValueError(f"correction_weight must be positive, got {correction_weight}")
        self.taxonomy = taxonomy
        self.min_similarity = min_similarity
        self.min_margin = min_margin
        self.correction_weight = correction_weight
        self._names = taxonomy.names()
        self._index = {name: i for i, name in enumerate(self._names)}

        texts: list[str] = []
        owner: list[int] = []
        for i, topic in enumerate(taxonomy.topics):
            seeds = ([topic.description] if topic.description else []) + list(topic.examples)
            texts.extend(seeds)
            owner.extend([i] * len(seeds))
        vectors = _as_rows(embed(texts), "embed(...)")
        if len(vectors) != len(texts):
            raise ValueError(f"embed returned {len(vectors)} rows for {len(texts)} texts")
        # Sums, not means: a prototype's direction is all that matters once normalised.
        self._seed_sum = np.zeros((len(self._names), vectors.shape[1]), dtype=np.float64)
        np.add.at(self._seed_sum, np.asarray(owner), vectors)
        self._correction_sum = np.zeros_like(self._seed_sum)
        self._corrections = np.zeros(len(self._names), dtype=np.int64)
        self._prototypes = self._compute_prototypes()

    @property
    def dim(self) -> int:
        return self._seed_sum.shape[1]

    @property
    def prototypes(self) -> np.ndarray:
        """One L2-normalised float32 row per topic, in taxonomy order (a copy)."""
        return self._prototypes.copy()

    def topic_names(self) -> list[str]:
        """The taxonomy's topics, then ``"other"``."""
        return [*self._names, OTHER]

    def corrections(self) -> dict[str, int]:
        """How many corrections each topic has absorbed."""
        return {name: int(n) for name, n in zip(self._names, self._corrections, strict=True)}

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine of each row to each prototype, shape ``(rows, topics)``."""
        return _as_rows(vectors, "vectors", self.dim) @ self._prototypes.T

    def assign(self, vectors: np.ndarray) -> list[tuple[str, float]]:
        """``(topic, best cosine)`` per row; the topic is ``"other"`` when the row fits none."""
        sims = self.similarities(vectors)
        if sims.shape[0] == 0:
            return []
        order = np.argsort(-sims, axis=1)
        rows = np.arange(sims.shape[0])
        best = sims[rows, order[:, 0]]
        second = sims[rows, order[:, 1]] if sims.shape[1] > 1 else np.full_like(best, -np.inf)
        confident = (best >= self.min_similarity) & (best - second >= self.min_margin)
        return [
            (self._names[j] if ok else OTHER, float(s))
            for j, s, ok in zip(order[:, 0], best, confident, strict=True)
        ]

    def add_corrections(self, vectors: np.ndarray, topics: Sequence[str]) -> None:
        """Fold analysts' corrected topics into the prototypes.

        ``"other"`` corrections are accepted and ignored: there is no prototype
        of "fits nothing". Unknown topic names raise ``ValueError`` before
        anything changes.
        """
        vectors = _as_rows(vectors, "vectors", self.dim)
        if len(topics) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(topics)} topics")
        unknown = sorted({t for t in topics if t != OTHER and t not in self._index})
        if unknown:
            raise ValueError(f"unknown topics {unknown}; known: {self.topic_names()}")
        keep = [i for i, t in enumerate(topics) if t != OTHER]
        if not keep:
            return
        idx = np.asarray([self._index[topics[i]] for i in keep])
        np.add.at(self._correction_sum, idx, vectors[keep])
        np.add.at(self._corrections, idx, 1)
        self._prototypes = self._compute_prototypes()

    def _compute_prototypes(self) -> np.ndarray:
        total = self._seed_sum + self.correction_weight * self._correction_sum
        norms = np.linalg.norm(total, axis=1, keepdims=True)
        return (total / np.maximum(norms, 1e-12)).astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"TopicModel(topics={self._names}, min_similarity={self.min_similarity}, "
            f"min_margin={self.min_margin}, correction_weight={self.correction_weight})"
        )


def _as_rows(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows, dim), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} have dim {arr.shape[1]}, the prototypes {dim}")
    return arr


def _topic(record: object, where: str) -> Topic:
    if not isinstance(record, Mapping):
        raise ConfigFileError(f"{where}: expected a mapping, got {type(record).__name__}")
    name = record.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigFileError(f"{where}: missing name")
    name = name.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ConfigFileError(
            f"{where}: name {shown(name, 30)} is longer than {MAX_NAME_CHARS} characters"
        )
    where = f"{where} ({name!r})"
    description = record.get("description") or ""
    if not isinstance(description, str):
        raise ConfigFileError(f"{where}: description must be a string")
    examples = record.get("examples") or []
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        raise ConfigFileError(f"{where}: examples must be a list of strings")
    examples = [e.strip() for e in examples if e.strip()]
    if not description.strip() and not examples:
        raise ConfigFileError(f"{where}: needs a description or examples")
    if name == OTHER:
        raise ConfigFileError(f"{where}: {OTHER!r} is reserved for items that fit no topic")
    return Topic(name, description.strip(), tuple(examples))


def toy_embed(texts: list[str]) -> np.ndarray:
    """A bag-of-words embedding over a tiny vocabulary, for examples and quick tests.

    >>> toy_embed(["stocks rally", "nothing here"]).round(3).tolist()[1]
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    vocab = ("quarterly", "results", "beat", "stocks", "rally", "futures", "slide")
    out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            if word in vocab:
                out[row, vocab.index(word)] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)
