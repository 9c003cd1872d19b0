"""Property tests: whatever MOODWIRE_NOTIFY holds, the parser gives destinations or one
clear ValueError that names the entry and the field, and never repeats a URL's secret.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.destinations import SEVERITIES, Destination, parse_destinations

CASES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A token-bearing part of a URL: what must never appear in an error.
TOKENS = st.text(alphabet="abcdefghijkmnopqrstuvwxyz0123456789", min_size=12, max_size=24).map(
    lambda t: "tok" + t
)


def _url(kind: str, token: str) -> str:
    return {
        "webhook": f"https://hooks.example.com/in/{token}",
        "json": f"json://127.0.0.1:8080/{token}",
        "email": f"mailto://alerts:{token}@example.com?smtp=127.0.0.1&to=risk@example.com",
        "pagerduty": f"pagerduty://{token}@{token[::-1]}/moodwire",
    }[kind]


KINDS = st.sampled_from(["webhook", "json", "email", "pagerduty"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@CASES
@given(st.text(max_size=200))
def test_any_text_gives_destinations_or_a_clear_error(text: str) -> None:
    try:
        parsed = parse_destinations(text)
    except ValueError as exc:
        assert str(exc).startswith("MOODWIRE_NOTIFY"), exc
        return
    assert all(isinstance(d, Destination) for d in parsed)


@CASES
@given(JSON_VALUES)
def test_any_json_gives_destinations_or_a_clear_error(value: object) -> None:
    try:
        parsed = parse_destinations(json.dumps(value))
    except ValueError as exc:
        assert str(exc).startswith("MOODWIRE_NOTIFY"), exc
        return
    assert parsed == () or all(isinstance(d, Destination) for d in parsed)


@CASES
@given(
    st.lists(
        st.tuples(KINDS, TOKENS, st.sampled_from(SEVERITIES)),
        min_size=1,
        max_size=4,
        unique_by=lambda x: x[1],
    )
)
def test_valid_lists_keep_every_url_kind_and_threshold(entries: list[tuple[str, str, str]]) -> None:
    text = json.dumps([{"url": _url(k, t), "min_severity": s} for k, t, s in entries])
    parsed = parse_destinations(text)
    assert [(d.kind, d.url.get_secret_value(), d.min_severity) for d in parsed] == [
        (k, _url(k, t), s) for k, t, s in entries
    ]
    for d, (_, token, _) in zip(parsed, entries, strict=True):
        assert token not in repr(d) and token not in d.key
        assert d.admits("critical") and d.admits("warning") == (d.min_severity == "warning")


@CASES
@given(st.text(max_size=30).filter(lambda s: s.strip()), TOKENS)
def test_bad_json_says_so_without_the_url(tail: str, token: str) -> None:
    text = json.dumps([{"url": _url("webhook", token)}])[:-1] + tail  # a broken end
    try:
        json.loads(text)
    except json.JSONDecodeError:
        pass
    else:
        return  # the tail happened to close it: not bad JSON
    try:
        parse_destinations(text)
    except ValueError as exc:
        assert "is not valid JSON" in str(exc) and token not in str(exc)
    else:
        raise AssertionError("bad JSON was accepted")


@CASES
@given(st.text(max_size=20).filter(lambda s: s not in SEVERITIES), KINDS, TOKENS, st.integers(0, 3))
def test_an_unknown_severity_names_the_entry_and_the_choices(
    severity: str, kind: str, token: str, position: int
) -> None:
    entries = [{"url": _url(kind, f"{token}{i}")} for i in range(position)]
    entries.append({"url": _url(kind, token), "min_severity": severity})
    try:
        parse_destinations(json.dumps(entries))
    except ValueError as exc:
        message = str(exc)
        assert (
            f"destination {position}: min_severity: must be one of 'warning', 'critical'" in message
        )
        assert token not in message
    else:
        raise AssertionError("an unknown severity was accepted")


@CASES
@given(st.sampled_from(["", " ", "\t", "\n  "]), st.integers(0, 2))
def test_an_empty_url_is_refused_by_position(url: str, position: int) -> None:
    entries = [{"url": _url("json", f"tokfill{i}xxxxxxx")} for i in range(position)] + [
        {"url": url}
    ]
    try:
        parse_destinations(json.dumps(entries))
    except ValueError as exc:
        assert f"destination {position}: url: is empty" in str(exc)
    else:
        raise AssertionError("an empty URL was accepted")


@CASES
@given(st.sampled_from(["bogus", "ftp", "slack", "pagerduty", "mailto"]), TOKENS)
def test_an_unusable_url_names_its_scheme_not_its_token(scheme: str, token: str) -> None:
    # "slack://tok…" lacks two of its three tokens; "pagerduty://tok…" its routing key; …
    url = f"{scheme}://{token}" if scheme != "mailto" else f"mailto://{token}"
    try:
        parsed = parse_destinations(json.dumps([{"url": url}]))
    except ValueError as exc:
        assert f"{scheme}://" in str(exc) and token not in str(exc)
    else:
        # apprise takes a bare host for e-mail: then it is one, and its token stays hidden.
        assert scheme == "mailto" and token not in repr(parsed)


def test_missing_and_unknown_fields_are_named() -> None:
    for text, expected in [
        ('[{"min_severity": "warning"}]', "destination 0: url is missing"),
        ('[{"url": "json://h/x", "severity": "warning"}]', "unknown field(s) severity"),
        ('["json://h/x"]', "destination 0: must be an object with a url"),
        ('{"url": 5}', "destination 0: url must be a string"),
        ("42", "must be a JSON list of destinations"),
        ('[{"url": "json://h/x"}, {"url": "json://h/x"}]', "same name or URL"),
        ('[{"url": "json://h/x", "name": "no spaces"}]', "destination 0: name: must be 1-64"),
    ]:
        try:
            parse_destinations(text)
        except ValueError as exc:
            assert expected in str(exc), (text, str(exc))
        else:
            raise AssertionError(f"accepted {text}")
    assert parse_destinations("") == parse_destinations("  ") == parse_destinations("[]") == ()
