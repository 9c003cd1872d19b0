"""The origin signature and its verifier, by property: what was signed verifies, anything
changed does not, and nothing a message holds raises anything but a clean refusal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from stream.origins import REASONS, Refused, Signer, Trust, canonical
from stream.schemas import ControlMessage, LabelMessage

KEYS = {"dashboard": SecretStr("k-dash"), "labeller:acme": SecretStr("k-acme")}
LABELS = Trust(KEYS, frozenset({"dashboard", "labeller:acme"}))
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
COMMANDS = Trust(KEYS, frozenset({"dashboard"}), max_age_s=300.0)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
origins = st.sampled_from(sorted(KEYS))


def _refusal(trust: Trust, raw: bytes | None) -> Refused | None:
    """The refusal, or None when it verified; any other exception fails the test."""
    try:
        trust.verify(raw, now=NOW)
    except Refused as exc:
        assert exc.reason in REASONS
        return exc
    return None


@given(payload=payloads, origin=origins)
def test_what_was_signed_verifies_as_its_origin(payload: dict, origin: str) -> None:
    raw = Signer(origin, KEYS[origin]).sign_json(payload)
    verified = LABELS.verify(raw)
    assert verified.origin == origin
    assert {k: v for k, v in verified.payload.items() if k not in ("origin", "signature")} == {
        k: v for k, v in json.loads(json.dumps(payload)).items() if k not in ("origin", "signature")
    }


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, origin=origins, data=st.data())
def test_any_change_to_a_signed_message_fails(
    payload: dict, origin: str, data: st.DataObject
) -> None:
    body = Signer(origin, KEYS[origin]).sign(payload)
    field = data.draw(st.sampled_from(sorted(body)), label="field")
    change = data.draw(st.sampled_from(["replace", "drop", "add"]), label="change")
    forged = dict(body)
    if change == "replace":
        value = data.draw(json_values, label="new value")
        assume(json.dumps(value) != json.dumps(body[field]))
        forged[field] = value
    elif change == "drop":
        del forged[field]
    else:
        key = data.draw(st.text(max_size=8), label="new key")
        assume(key not in forged)
        forged[key] = data.draw(json_values, label="its value")
    refused = _refusal(LABELS, json.dumps(forged).encode())
    assert refused is not None, forged


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads, origin=origins, data=st.data())
def test_a_flipped_byte_fails_unless_it_left_the_same_message(
    payload: dict, origin: str, data: st.DataObject
) -> None:
    raw = bytearray(Signer(origin, KEYS[origin]).sign_json(payload))
    at = data.draw(st.integers(0, len(raw) - 1), label="at")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="byte")
    original = json.loads(bytes(raw))
    raw[at] = new
    if _refusal(LABELS, bytes(raw)) is None:
        # Only a change JSON does not see (one blank for another) keeps the signature.
        assert json.loads(bytes(raw)) == original


@given(payload=payloads, origin=origins)
def test_the_wrong_key_is_a_bad_signature(payload: dict, origin: str) -> None:
    raw = Signer(origin, SecretStr("not-its-key")).sign_json(payload)
    assert _refusal(LABELS, raw).reason == "bad_signature"


@given(payload=payloads, origin=st.from_regex(r"[a-z][a-z0-9:.-]{0,20}", fullmatch=True))
def test_an_unknown_or_unlisted_origin_is_refused(payload: dict, origin: str) -> None:
    assume(origin not in KEYS)
    raw = Signer(origin, SecretStr("its-own-key")).sign_json(payload)
    assert _refusal(LABELS, raw).reason == "origin_not_allowed"
    listed = Trust(KEYS, frozenset({origin}))  # allowed, but no key for it
    assert _refusal(listed, raw).reason == "unknown_origin"


@given(
    origin=st.none() | json_values,
    sig=st.none() | json_values | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    rest=payloads,
)
def test_missing_or_garbled_origin_and_signature_are_clean_refusals(
    origin: object, sig: object, rest: dict
) -> None:
    body = {**rest, "origin": origin, "signature": sig}
    for value in (body, {k: v for k, v in body.items() if v is not None}):
        assert _refusal(LABELS, json.dumps(value).encode()) is not None


@given(raw=st.binary(max_size=300) | st.none())
def test_any_bytes_verify_or_are_refused_cleanly(raw: bytes | None) -> None:
    assert _refusal(LABELS, raw) is not None  # no random bytes carry a valid signature


@given(age_s=st.floats(-10_000, 10_000), origin=st.just("dashboard"))
def test_a_command_is_taken_only_inside_the_replay_window(age_s: float, origin: str) -> None:
    msg = ControlMessage(action="promote", version="v3", ts=NOW - timedelta(seconds=age_s))
    raw = Signer(origin, KEYS[origin]).sign_json(msg)
    refused = _refusal(COMMANDS, raw)
    if abs(age_s) > 300.0 + 1e-3:
        assert refused is not None and refused.reason == "stale"
    elif abs(age_s) < 300.0 - 1e-3:
        assert refused is None


def test_a_command_without_its_time_or_from_an_unlisted_origin_is_refused() -> None:
    body = Signer("dashboard", KEYS["dashboard"]).sign({"action": "retrain"})
    assert _refusal(COMMANDS, json.dumps(body).encode()).reason == "stale"
    msg = ControlMessage(action="retrain", ts=NOW)
    acme = Signer("labeller:acme", KEYS["labeller:acme"]).sign_json(msg)
    assert _refusal(COMMANDS, acme).reason == "origin_not_allowed"  # labels only


@given(label=st.sampled_from(["negative", "neutral", "positive"]), text=st.text(max_size=50))
def test_a_signed_label_model_round_trips_through_the_schema(label: str, text: str) -> None:
    raw = Signer("labeller:acme", KEYS["labeller:acme"]).sign_json(
        LabelMessage(text=text or "x", label=label, ts=NOW)
    )
    parsed = LabelMessage.model_validate_json(raw)
    assert parsed.origin == "labeller:acme" and len(parsed.signature) == 64
    assert LABELS.verify(raw).origin == "labeller:acme"


def test_the_canonical_form_is_what_the_docs_say() -> None:
    # A sender in another language reproduces exactly these bytes.
    assert canonical({"z": [1, 2.5], "a": "é", "signature": "x"}) == b'{"a":"\\u00e9","z":[1,2.5]}'


def test_a_signer_refuses_a_bad_name_or_an_empty_key() -> None:
    with pytest.raises(ValueError, match="not a valid origin name"):
        Signer("two words", SecretStr("k"))
    with pytest.raises(ValueError, match="empty"):
        Signer("cli", SecretStr(""))
