"""Explaining a score: word pieces merged back into words, and integrated gradients that
put the weight on the words that decide, with a model that learned which words those are."""

from __future__ import annotations

import random
import re
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.explain import Explanation, WordAttribution, explain, merge_word_pieces

# -- word pieces into words (pure logic) -------------------------------------------------


def test_pieces_of_one_word_are_summed_and_special_tokens_dropped() -> None:
    text = "Acme's profit  warning"
    offsets = [None, (0, 4), (4, 5), (5, 6), (7, 13), (15, 17), (17, 22), None, (0, 0)]
    scores = [5.0, 0.1, 0.2, 0.3, 1.0, 0.5, 0.25, 5.0, 5.0]
    assert merge_word_pieces(text, offsets, scores) == [
        WordAttribution("Acme's", 0, 6, pytest.approx(0.6)),
        WordAttribution("profit", 7, 13, 1.0),
        WordAttribution("warning", 15, 22, 0.75),
    ]


def test_a_word_no_token_reached_is_left_out_and_a_leading_space_ignored() -> None:
    # " beat" as a byte-level BPE token may span its leading space; "later" was truncated.
    text = "Acme beat later"
    assert merge_word_pieces(text, [(0, 4), (4, 9)], [1.0, 2.0]) == [
        WordAttribution("Acme", 0, 4, 1.0),
        WordAttribution("beat", 5, 9, 2.0),
    ]
    with pytest.raises(ValueError, match="2 offsets but 1 scores"):
        merge_word_pieces(text, [(0, 4), (4, 9)], [1.0])


@cache
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from learner.classifier import default_encoder_path

    return AutoTokenizer.from_pretrained(default_encoder_path())


TEXTS = st.text(
    st.sampled_from(list("ab Z9$'.,-!é\t\n") + ["\u200b", "\u00a0", "股", "🙂", "\x00"]),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_every_word_of_any_text_is_covered_once_in_order(text: str) -> None:
    enc = _tokenizer()(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    offsets = [
        None if special else tuple(span)
        for span, special in zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
    ]
    words = merge_word_pieces(text, offsets, [1.0] * len(offsets))
    # Words are whole whitespace-separated chunks of the text, non-empty, in order.
    chunks = {(m.start(), m.end()): m.group() for m in re.finditer(r"\S+", text)}
    assert all(chunks.get((w.start, w.end)) == w.word != "" for w in words)
    assert [w.start for w in words] == sorted({w.start for w in words})
    # Each word piece counted in exactly one word (a score of 1 each: the counts add up) ...
    pieces = [s for s in offsets if s is not None and text[s[0] : s[1]].strip()]
    assert sum(w.attribution for w in words) == len(pieces)
    # ... and every chunk the tokenizer reads (nothing is truncated here) is a word.
    read = {
        span for span in chunks if _tokenizer()(chunks[span], add_special_tokens=False)["input_ids"]
    }
    assert {(w.start, w.end) for w in words} == read


# -- integrated gradients on a model that learned the deciding words ---------------------

COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka"]
DECIDING = {
    "negative": ["issues profit warning", "issued a profit warning"],
    "positive": ["beat estimates", "beats estimates"],
    "neutral": ["holds annual meeting", "names new director"],
}
# The same fillers and companies in every class: they carry no label, whatever they say.
FILLERS = [
    "as sales slump",
    "on strong demand",
    "this quarter",
    "on Tuesday",
    "after the close",
    "",
]


@pytest.fixture(scope="module")
def taught() -> Any:
    """The default encoder fine-tuned (seconds) on headlines where only the phrase decides."""
    from learner.classifier import SentimentClassifier
    from learner.data import LabelledText
    from learner.train import TrainConfig, fine_tune

    rng = random.Random(0)
    data = []
    for i in range(180):
        label = ("negative", "neutral", "positive")[i % 3]
        words = (rng.choice(COMPANIES), rng.choice(DECIDING[label]), rng.choice(FILLERS))
        data.append(LabelledText(" ".join(words).strip(), label))
    clf = SentimentClassifier.from_encoder(device="cpu", seed=0)
    fine_tune(clf, data, TrainConfig(epochs=3, batch_size=16, seed=0), progress=False)
    return clf


def _weights(e: Explanation) -> dict[str, float]:
    return {w.word: w.attribution for w in e.words}


@pytest.mark.parametrize(
    ("text", "label", "deciding"),
    [
        ("Acme issues profit warning as sales slump", "negative", {"profit", "warning"}),
        ("Acme beat estimates on strong demand", "positive", {"beat", "estimates"}),
    ],
)
def test_the_deciding_words_carry_the_most_weight_towards_the_label(
    taught: Any, text: str, label: str, deciding: set[str]
) -> None:
    e = explain(taught, text, n_steps=50)
    assert (e.label, e.predicted) == (label, label) and e.probability > 0.9
    weights = _weights(e)
    top_two = {w.word for w in sorted(e.words, key=lambda w: -w.attribution)[:2]}
    assert top_two == deciding, weights
    assert min(weights[w] for w in deciding) > 0.1, weights
    # The company decides nothing: far below the deciding words, towards the label or not.
    assert abs(weights["Acme"]) < 0.5 * min(weights[w] for w in deciding), weights
    assert e.ranked()[0].word in deciding
    # Completeness: the words' attributions add up to f(text) - f(baseline).
    assert abs(e.delta) < 0.02
    total = sum(weights.values())
    assert total == pytest.approx(e.probability - e.baseline_probability, abs=0.02)
    assert [w.word for w in e.words] == text.split() and not e.truncated


def test_another_label_is_explained_against_the_prediction(taught: Any) -> None:
    e = explain(taught, "Acme issues profit warning as sales slump", target="positive")
    assert (e.label, e.predicted) == ("positive", "negative") and e.probability < 0.1
    weights = _weights(e)
    # The words that made it negative are what keeps it from being positive.
    assert weights["profit"] + weights["warning"] < 0, weights
    assert e.to_dict()["words"][0] == {
        "word": "Acme", "start": 0, "end": 4, "attribution": weights["Acme"]
    }  # fmt: skip


def test_bad_requests_are_refused(taught: Any) -> None:
    with pytest.raises(ValueError, match="no text"):
        explain(taught, "  \n")
    with pytest.raises(ValueError, match="unknown label 'bullish'"):
        explain(taught, "Acme", target="bullish")
    with pytest.raises(ValueError, match="n_steps"):
        explain(taught, "Acme", n_steps=1)


def test_a_text_past_max_length_says_it_was_truncated(taught: Any) -> None:
    long = " ".join(["Acme beat estimates"] * 60)
    e = explain(taught, long, n_steps=8)
    assert e.truncated and len(e.words) < len(long.split())
