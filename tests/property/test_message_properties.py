"""Property tests: whatever bytes arrive, the validator answers, and what it accepts is
storable on SQLite and PostgreSQL and publishable; the same for dead letters, labels and
control messages (DESIGN.md, invariant 2).

Generated inputs: random bytes, JSON built from hostile pieces (NUL, lone surrogates,
controls, huge and non-finite numbers, deep nesting, absurd timestamps), and mutations
of valid messages.
"""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.store import Store
from stream.deadletter import dlq_message, rejection_row
from stream.entities import EntityTagger, WatchList
from stream.schemas import ControlMessage, LabelMessage, label_id, label_row
from stream.validate import REASONS, Accepted, Limits, Rejected, parse_message, validate
from stream.worker import item_row, scored_item

LIMITS = Limits(max_message_bytes=64 * 1024, max_text_chars=4000, max_entities=64)
LABELS = ("negative", "neutral", "positive")
_OFFSETS = itertools.count(int(datetime.now(UTC).timestamp() * 1000))
PROBS = np.array([0.2, 0.3, 0.5], dtype=np.float32)
TAGGER = EntityTagger(WatchList.default())
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- strategies ---------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())  # surrogates, NUL and controls included
hostile_text = st.one_of(
    st.text(any_char, max_size=40),
    st.sampled_from(
        ["\x00", "a\x00b", "\ud800", "x\udfffy", "\ufeff", "", " ", "ß" * 40, "$" + "Q" * 70,
         "\u202e", "\r\n", "x" * 300, "9" * 5000]
    ),
)  # fmt: skip
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=16,
)
ts_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda d: d.isoformat()),
    st.sampled_from(
        ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "1e308", "2020-02-30",
         "+10000-01-01", "2999-01-01T00:00:00Z", "2020-04-15 01:03:46", "now", ""]
    ),
    hostile_text,
)  # fmt: skip
message = st.fixed_dictionaries(
    {"text": st.one_of(hostile_text, json_value)},
    optional={
        "id": st.one_of(hostile_text, json_value),
        "ts": ts_value,
        "source": st.one_of(hostile_text, json_value),
        "entities": st.one_of(st.lists(hostile_text, max_size=6), json_value),
        "meta": json_value,
    },
)


def _encode(payload: object, how: int) -> bytes:
    """JSON bytes three ways: ASCII escapes, raw UTF-8 (lone surrogates make it invalid), or
    with non-finite numbers written as the literals Python accepts."""
    if how == 0:
        return json.dumps(payload, ensure_ascii=True, allow_nan=True).encode()
    text = json.dumps(payload, ensure_ascii=False, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def _deep(depth: int, where: str) -> bytes:
    inner = "[" * depth + "]" * depth
    return (
        ('{"text": "x", "meta": {"a": ' + inner + "}}").encode()
        if where == "meta"
        else (inner.encode())
    )


raw_messages = st.one_of(
    st.binary(max_size=512),
    st.tuples(message, st.integers(0, 1)).map(lambda t: _encode(*t)),
    st.tuples(st.integers(1, 5000), st.sampled_from(["meta", "top"])).map(lambda t: _deep(*t)),
    st.integers(1, 6000).map(lambda k: ('{"text": "x", "ts": ' + "9" * k + "}").encode()),
    st.tuples(message, st.randoms(use_true_random=False)).map(lambda t: _mutate(_encode(t[0], 0), t[1])),
)  # fmt: skip


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.choice(
                [b"\x00", b'"', b"\\u0000", b"\\ud800", b"1e999", b"NaN", b"[", b"{"]
            )
        elif op == 2:
            del data[at : at + rng.randint(1, 8)]
        else:
            data[at:at] = data[: rng.randint(0, 16)]
    return bytes(data)


# -- stores -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> list[Store]:
    sqlite = Store(f"sqlite:///{Path(tmp_path_factory.mktemp('prop')) / 'store.db'}")
    return [sqlite, Store(pg_url)]


def _row(acc: Accepted, offset: int) -> tuple[dict, bytes]:
    entities = TAGGER.tag(acc.item.text, list(acc.item.entities))
    scored = scored_item(
        acc, PROBS, LABELS, version="v1", entities=entities, topic=None, neighbors=[],
        scored_at=datetime.now(UTC),
    )  # fmt: skip
    message = scored.model_dump_json().encode("utf-8")
    row = item_row(scored, PROBS, np.zeros(8, dtype=np.float32), partition=0, offset=offset)
    return row, message


# -- properties ---------------------------------------------------------------------------


@PROPERTY
@given(raw=raw_messages, kafka_ts=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))
def test_validate_answers_every_input_and_names_a_known_reason(raw: bytes, kafka_ts: int) -> None:
    outcome = validate(raw, kafka_ts_ms=kafka_ts, limits=LIMITS)
    if isinstance(outcome, Rejected):
        # "unexpected" is the safety net for a validator bug: generated input must never need it.
        assert outcome.reason in REASONS and outcome.reason != "unexpected", outcome
        assert outcome.detail
        json.dumps(outcome.detail).encode("utf-8")
    else:
        assert isinstance(outcome, Accepted)
        assert outcome.item.text.strip() and outcome.item.ts is not None
        assert outcome.item.ts.tzinfo is not None


@PROPERTY
@given(raw=raw_messages, offset=st.integers(0, 2**40))
def test_what_is_accepted_is_storable_and_publishable_on_both_stores(
    stores: list[Store], raw: bytes, offset: int
) -> None:
    outcome = validate(raw, kafka_ts_ms=None, limits=LIMITS)
    if not isinstance(outcome, Accepted):
        return
    row, message = _row(outcome, offset)
    back = json.loads(message.decode("utf-8"))  # publishable: valid UTF-8 JSON
    assert back["id"] == outcome.id and back["text"] == outcome.item.text
    for store in stores:
        store.write_batch([row], [])
        stored = store.get_item(outcome.id)
        assert stored is not None and stored["id"] == outcome.id


@PROPERTY
@given(raw=st.one_of(st.binary(max_size=2048), raw_messages), reason=st.sampled_from(REASONS))
def test_every_dead_letter_is_storable_and_publishable(
    stores: list[Store], raw: bytes, reason: str
) -> None:
    offset = next(_OFFSETS)  # a new position each example: a stored row is never reused
    row = rejection_row(
        "news", 1, offset, raw, reason, raw.decode("utf-8", "replace"), datetime.now(UTC)
    )
    for store in stores:
        _, _, seqs = store.write_batch([], [row])
        (stored,) = store.rejections_by_seq(seqs)
        message = dlq_message(stored, "news.dlq")
        json.loads(message.value.decode("utf-8"))
        assert stored["raw_bytes"] == len(raw)


@PROPERTY
@given(payload=st.dictionaries(st.sampled_from(["item_id", "text", "label", "topic", "source", "annotator", "ts"]),
                               st.one_of(hostile_text, json_value, ts_value), max_size=7),
       how=st.integers(0, 1))  # fmt: skip
def test_label_messages_are_refused_cleanly_or_fit_the_labels_table(
    stores: list[Store], payload: dict, how: int
) -> None:
    raw = _encode(payload, how)
    try:
        msg = parse_message(LabelMessage, raw)  # as the learner reads them
    except ValueError:
        return
    row = label_row(msg)
    assert row["id"] == label_id(msg)
    for store in stores:
        store.add_labels([row])


@PROPERTY
@given(payload=st.fixed_dictionaries(
    {"action": st.sampled_from(["promote", "rollback", "retrain", "drift", "reload", "x"])},
    optional={"version": hostile_text, "actor": hostile_text, "reason": hostile_text,
              "details": json_value, "ts": ts_value}),
    how=st.integers(0, 1))  # fmt: skip
def test_control_messages_are_refused_cleanly_or_serialise(payload: dict, how: int) -> None:
    raw = _encode(payload, how)
    try:
        msg = parse_message(ControlMessage, raw)
    except ValueError:
        return
    json.loads(msg.model_dump_json())
