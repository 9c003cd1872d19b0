"""Every kind of bad input gets its own reason; good input passes unchanged."""

from __future__ import annotations

import json

import pytest

from stream.validate import REASONS, Accepted, Limits, Rejected, validate

LIMITS = Limits(max_message_bytes=2048, max_text_chars=200, max_entities=3)


def v(payload: object | bytes, ts: int | None = 1_700_000_000_000) -> Accepted | Rejected:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return validate(raw, kafka_ts_ms=ts, limits=LIMITS)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"", "malformed_json"),
        (None, "malformed_json"),
        (b"\xff\xfe\x00bad", "invalid_utf8"),
        (b'{"text": "caf\xe9"}', "invalid_utf8"),
        (b"[1, 2]", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        ({"title": "no text field"}, "schema"),
        ({"text": 123}, "schema"),
        ({"text": ["a"]}, "schema"),
        ({"text": "ok", "entities": "ACME"}, "schema"),
        ({"text": "ok", "entities": [1, 2]}, "schema"),
        ({"text": "ok", "ts": "yesterday"}, "schema"),
        ({"text": "ok", "ts": True}, "schema"),
        ({"text": "ok", "id": 5}, "schema"),
        ({"text": "ok", "meta": "x"}, "schema"),
        ({"text": ""}, "empty_text"),
        ({"text": "   \n\t "}, "empty_text"),
        ({"text": "x" * 201}, "text_too_long"),
        ({"text": "ok", "entities": ["A", "B", "C", "D"]}, "too_many_entities"),
        (json.dumps({"text": "y" * 3000}).encode(), "oversized"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(raw: object, reason: str) -> None:
    outcome = validate(
        raw if raw is None or isinstance(raw, bytes) else json.dumps(raw).encode(),
        kafka_ts_ms=0,
        limits=LIMITS,
    )
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == reason
    assert outcome.reason in REASONS and outcome.detail


def test_good_item_keeps_its_fields_and_gets_kafka_time_when_it_has_none() -> None:
    out = v({"text": "ACME beats", "source": "wire", "entities": ["ACME"], "meta": {"k": 1}})
    assert isinstance(out, Accepted)
    assert out.item.ts is not None and int(out.item.ts.timestamp()) == 1_700_000_000
    assert out.item.entities == ["ACME"] and out.item.meta == {"k": 1}


def test_item_time_wins_over_kafka_time_and_accepts_epochs() -> None:
    iso = v({"text": "a", "ts": "2020-04-15T01:03:46Z"})
    epoch_s = v({"text": "a", "ts": 1586912626})
    epoch_ms = v({"text": "a", "ts": 1586912626000})
    assert isinstance(iso, Accepted) and isinstance(epoch_s, Accepted)
    assert isinstance(epoch_ms, Accepted)
    assert iso.item.ts == epoch_s.item.ts == epoch_ms.item.ts


def test_id_is_given_or_derived_stably_from_content() -> None:
    a, b = v({"text": "same", "source": "s"}), v({"text": "same", "source": "s"})
    c = v({"text": "same", "source": "other"})
    given = v({"text": "same", "id": "wire-42"})
    assert isinstance(a, Accepted) and isinstance(b, Accepted) and isinstance(c, Accepted)
    assert a.id == b.id != c.id
    assert isinstance(given, Accepted) and given.id == "wire-42"


def test_unknown_fields_are_ignored_not_rejected() -> None:
    assert isinstance(v({"text": "ok", "extra": {"deep": [1]}}), Accepted)
