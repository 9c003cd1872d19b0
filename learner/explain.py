"""Why a text got its label: per-word integrated gradients (captum) of one probability.

Computed on demand for one text (``moodwire explain``, the dashboard's Explain), never
in the scoring loop: a few dozen forward and backward passes per text.

Integrated gradients walks from a baseline input to the text in ``n_steps`` steps
and sums the gradients along the way, over the model's input (word-piece)
embeddings. The baseline is the same token sequence with every word piece
replaced by the pad token, [CLS] and [SEP] kept and the attention mask unchanged:
the model sees "a sentence of this length with no words". The attributed output
is the label's probability, so a word's attribution is its share of the move
from the baseline's probability to the text's (completeness: they sum to
``probability - baseline_probability``, up to ``delta``). Word pieces are summed
back into the text's whitespace-separated words.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from learner.classifier import SentimentClassifier

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class WordAttribution:
    """One word of the text (``text[start:end]``) and its signed attribution.

    Positive: the word pushed the label's probability up; negative: down.
    """

    word: str
    start: int
    end: int
    attribution: float


@dataclass(frozen=True)
class Explanation:
    """Integrated-gradients attribution of ``label``'s probability to each word of a text."""

    text: str
    label: str
    probability: float  # the label's probability for the text
    predicted: str  # the most probable label (``label`` unless another was asked for)
    baseline_probability: float  # the label's probability for the all-pad baseline
    words: tuple[WordAttribution, ...]  # in text order
    delta: float  # IG's convergence delta: sum of attributions - (f(text) - f(baseline))
    n_steps: int
    truncated: bool  # the text was longer than the model's max_length: words past it are absent

    def ranked(self) -> list[WordAttribution]:
        """The words by weight: largest absolute attribution first (ties in text order)."""
        return sorted(self.words, key=lambda w: -abs(w.attribution))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON, Streamlit's cache): the words in text order."""
        out = asdict(self)
        out["words"] = [asdict(w) for w in self.words]
        return out


def merge_word_pieces(
    text: str, offsets: Sequence[tuple[int, int] | None], scores: Sequence[float]
) -> list[WordAttribution]:
    """Sum per-token ``scores`` into the whitespace-separated words of ``text``.

    ``offsets[i]`` is token ``i``'s character span in ``text`` (the tokenizer's
    ``offset_mapping``); ``None`` or an empty span marks a special token ([CLS],
    [SEP], padding), which belongs to no word. A token belongs to the word its
    first non-space character is in. Words no token falls in (dropped characters,
    or past truncation) are left out.

    >>> merge_word_pieces("Acme beats", [None, (0, 4), (5, 8), (8, 10), None], [9, 1.0, 2.0, 0.5, 9])
    [WordAttribution(word='Acme', start=0, end=4, attribution=1.0), WordAttribution(word='beats', start=5, end=10, attribution=2.5)]
    """
    if len(offsets) != len(scores):
        raise ValueError(f"{len(offsets)} offsets but {len(scores)} scores")
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts = [s for s, _ in spans]
    totals: dict[int, float] = {}
    for span, score in zip(offsets, scores, strict=True):
        if span is None:
            continue
        start, end = span
        while start < end and text[start].isspace():  # e.g. a leading-space BPE token
            start += 1
        if start >= end:
            continue
        i = bisect.bisect_right(starts, start) - 1
        if i < 0 or start >= spans[i][1]:
            continue  # only whitespace there: not in any word
        totals[i] = totals.get(i, 0.0) + float(score)
    return [
        WordAttribution(text[spans[i][0] : spans[i][1]], spans[i][0], spans[i][1], totals[i])
        for i in sorted(totals)
    ]


def explain(
    classifier: SentimentClassifier,
    text: str,
    *,
    target: str | None = None,
    n_steps: int = 50,
    internal_batch_size: int = 16,
) -> Explanation:
    """Attribute ``target``'s probability (default: the predicted label) to the words of ``text``.

    ``n_steps``: points on the path from the baseline (more: a smaller ``delta``,
    proportionally slower). The classifier's tokenizer must be a fast one (offsets).
    """
    from captum.attr import LayerIntegratedGradients

    if not text.strip():
        raise ValueError("there is no text to explain")
    if target is not None and target not in classifier.labels:
        raise ValueError(f"unknown label {target!r}: one of {list(classifier.labels)}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    tokenizer, model = classifier.tokenizer, classifier.model
    if not tokenizer.is_fast:
        raise ValueError("explaining needs a fast tokenizer (character offsets of each token)")
    enc = tokenizer(
        text,
        truncation=True,
        max_length=classifier.max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_overflowing_tokens=False,
        return_tensors="pt",
    )
    special = enc.pop("special_tokens_mask")[0].bool()
    offsets = [tuple(int(v) for v in pair) for pair in enc.pop("offset_mapping")[0]]
    enc = enc.to(classifier.device)
    input_ids, mask = enc["input_ids"], enc["attention_mask"]
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    baseline = torch.where(special.to(input_ids.device), input_ids, torch.full_like(input_ids, pad))
    columns = classifier.label_ids(list(classifier.labels))

    def probabilities(ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        more = {k: v.expand(ids.shape[0], -1) for k, v in extra.items()}
        logits = model(input_ids=ids, attention_mask=attention, **more).logits
        return torch.softmax(logits.float(), dim=-1)[:, columns]

    model.eval()
    with torch.no_grad():
        probs = probabilities(torch.cat([input_ids, baseline]), torch.cat([mask, mask]))
    predicted = classifier.labels[int(probs[0].argmax())]
    label = target or predicted
    column = classifier.labels.index(label)
    ig = LayerIntegratedGradients(probabilities, model.get_input_embeddings())
    with torch.enable_grad():
        attributions, delta = ig.attribute(
            input_ids,
            baselines=baseline,
            target=column,
            additional_forward_args=(mask,),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    per_token = attributions.sum(dim=-1)[0].detach().float().cpu().tolist()
    spans = [None if special[i] else offsets[i] for i in range(len(offsets))]
    words = merge_word_pieces(text, spans, per_token)
    last = max((span[1] for span in spans if span is not None), default=0)
    return Explanation(
        text=text,
        label=label,
        probability=float(probs[0, column]),
        predicted=predicted,
        baseline_probability=float(probs[1, column]),
        words=tuple(words),
        delta=float(delta.reshape(-1)[0]),
        n_steps=n_steps,
        truncated=bool(text[last:].strip()),
    )
