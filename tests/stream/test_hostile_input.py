"""Every class of hostile input found by fuzzing, pinned: what the validator decides, and
that the outcome (the item, or its dead letter) is storable on SQLite and on PostgreSQL and
publishable. The property tests in tests/property/ generate the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from state.store import Store
from stream.deadletter import dlq_message, rejection_row
from stream.schemas import LabelMessage, label_row
from stream.validate import Accepted, Limits, Rejected, validate
from stream.worker import item_row, scored_item

LIMITS = Limits(max_message_bytes=64 * 1024, max_text_chars=4000, max_entities=64)
PROBS = np.array([0.1, 0.2, 0.7], dtype=np.float32)


def deep(n: int) -> str:
    return "[" * n + "]" * n


# (name, raw message, "accepted" or the rejection reason)
CASES = [
    ("ts 1e308", b'{"text": "x", "ts": 1e308}', "ts_out_of_range"),
    ("ts negative", b'{"text": "x", "ts": -1}', "ts_out_of_range"),
    ("ts huge int", b'{"text": "x", "ts": ' + b"9" * 400 + b"}", "ts_out_of_range"),
    ("ts Infinity literal", b'{"text": "x", "ts": Infinity}', "malformed_json"),
    ("ts 1e999 (overflows a double)", b'{"text": "x", "ts": 1e999}', "malformed_json"),
    ("ts year 9999 with offset", b'{"text": "x", "ts": "9999-12-31T23:59:59-05:00"}', "ts_out_of_range"),
    ("ts year 1 with offset", b'{"text": "x", "ts": "0001-01-01T00:00:00+01:00"}', "ts_out_of_range"),
    ("ts year 10000", b'{"text": "x", "ts": "+10000-01-01T00:00:00"}', "schema"),
    ("ts far future", b'{"text": "x", "ts": "2999-01-01T00:00:00Z"}', "ts_out_of_range"),
    ("int over 4300 digits", b'{"text": "x", "meta": {"n": ' + b"7" * 5000 + b"}}", "malformed_json"),
    ("int over 64 bits in meta", b'{"text": "x", "meta": {"n": 18446744073709551616}}', "schema"),
    ("NaN in meta", b'{"text": "x", "meta": {"v": NaN}}', "malformed_json"),
    ("deep nesting top level", deep(30_000).encode(), "malformed_json"),
    ("deep nesting in meta", ('{"text": "x", "meta": {"a": ' + deep(5000) + "}}").encode(), "malformed_json"),
    ("meta nested 255 deep", ('{"text": "x", "meta": {"a": ' + deep(255) + "}}").encode(), "schema"),
    ("lone surrogate in id", b'{"text": "x", "id": "a\\ud800"}', "schema"),
    ("NUL in id", b'{"text": "x", "id": "a\\u0000b"}', "schema"),
    ("id too long", json.dumps({"text": "x", "id": "i" * 257}).encode(), "schema"),
    ("entity longer than the column", json.dumps({"text": "x", "entities": ["E" * 65]}).encode(), "schema"),
    ("entity longer once upper-cased", json.dumps({"text": "x", "entities": ["ß" * 40]}).encode(), "schema"),
    ("source too long", json.dumps({"text": "x", "source": "s" * 257}).encode(), "schema"),
    ("invalid UTF-8 with NUL", b'{"text": "\x00\xff"}', "invalid_utf8"),
    ("raw NUL byte only", b"\x00", "malformed_json"),
    ("tombstone", None, "malformed_json"),
    ("NUL in text", b'{"text": "profit\\u0000 warning"}', "accepted"),
    ("raw NUL byte in text", b'{"text": "profit\x00 warning"}', "malformed_json"),
    ("lone surrogate in text", b'{"text": "shares \\ud83d up"}', "accepted"),
    ("surrogate pair in text", b'{"text": "shares \\ud83d\\ude80 up"}', "accepted"),
    ("NUL and surrogate in entities", b'{"text": "x", "entities": ["AC\\u0000ME", "\\udfff"]}', "accepted"),
    ("NUL in source", b'{"text": "x", "source": "wi\\u0000re"}', "accepted"),
    ("NUL and surrogates in meta", b'{"text": "x", "meta": {"k\\u0000": ["\\ud800", {"\\udc00": 1}]}}', "accepted"),
    ("control characters in text", b'{"text": "a\\u0001\\u001f\\u007f\\u202e b"}', "accepted"),
]  # fmt: skip


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> dict[str, Store]:
    path = Path(tmp_path_factory.mktemp("hostile")) / "store.db"
    return {"sqlite": Store(f"sqlite:///{path}"), "postgresql": Store(pg_url)}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize(("name", "raw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_class_of_hostile_input_is_decided_and_its_outcome_stored(
    stores: dict[str, Store], backend: str, name: str, raw: bytes | None, expected: str
) -> None:
    store = stores[backend]
    outcome = validate(raw, kafka_ts_ms=1_700_000_000_000, limits=LIMITS)
    now = datetime.now(UTC)
    offset = abs(hash((name, backend))) % 10**9
    if expected == "accepted":
        assert isinstance(outcome, Accepted), outcome
        scored = scored_item(
            outcome, PROBS, ("negative", "neutral", "positive"), version="v1",
            entities=list(outcome.item.entities), topic=None, neighbors=[], scored_at=now,
        )  # fmt: skip
        message = scored.model_dump_json().encode("utf-8")
        assert json.loads(message)["text"] == outcome.item.text
        assert "\x00" not in outcome.item.text
        new, _, _ = store.write_batch(
            [item_row(scored, PROBS, np.zeros(4, np.float32), offset=offset)], []
        )
        assert store.get_item(outcome.id)["text"] == outcome.item.text
    else:
        assert isinstance(outcome, Rejected) and outcome.reason == expected, outcome
        row = rejection_row("news", 0, offset, raw, outcome.reason, outcome.detail, now)
        _, _, seqs = store.write_batch([], [row])
        (stored,) = store.rejections_by_seq(seqs)
        back = json.loads(dlq_message(stored, "news.dlq").value)
        assert back["reason"] == expected and back["raw_bytes"] == len(raw or b"")


def test_an_absurd_kafka_timestamp_falls_back_to_now() -> None:
    for kafka_ts in (2**63 - 1, -(2**63), 10**15 * 1000):
        outcome = validate(b'{"text": "x"}', kafka_ts_ms=kafka_ts, limits=LIMITS)
        assert isinstance(outcome, Accepted)
        assert abs((outcome.item.ts - datetime.now(UTC)).total_seconds()) < 60


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_labels_with_nul_and_long_fields_are_refused_or_stored(
    stores: dict[str, Store], backend: str
) -> None:
    ok = LabelMessage.model_validate_json(
        b'{"text": "profit\\u0000 warning", "label": "negative", "annotator": "a\\u0000n"}'
    )
    stores[backend].add_labels([label_row(ok)])
    for bad in (
        b'{"text": "x", "label": "negative", "source": "' + b"s" * 65 + b'"}',
        b'{"item_id": "a\\u0000", "label": "negative"}',
        b'{"text": "x", "label": "negative", "ts": "9999-12-31T23:59:59-05:00"}',
        b'{"text": "x", "label": "negative", "ts": 1e308}',
    ):
        with pytest.raises(ValueError):
            LabelMessage.model_validate_json(bad)
