"""Masking personal data: what it finds in any text, and what it never touches.

Generated e-mail addresses, valid IBANs and Luhn-valid card numbers embedded
anywhere in random text are masked; texts built from what financial headlines
hold (tickers, prices, percentages, dates, counts) come out unchanged;
masking is idempotent and lengthens a text by at most one character per token.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stdnum import iban, luhn

from stream.masking import TOKENS, Masker

CASES = settings(
    max_examples=300,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow],
)
MASKER = Masker(phone_regions=("US", "GB", "FR", "DE"))

_lower = "abcdefghijklmnopqrstuvwxyz"
_alnum = _lower + "0123456789"
emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.text(_alnum + "._+-", min_size=1, max_size=20).filter(lambda s: s[0] in _alnum),
    st.lists(st.text(_alnum, min_size=1, max_size=10), min_size=1, max_size=3),
    st.text(_lower, min_size=2, max_size=6),
)

# Countries whose BBAN is letters/digits of a fixed shape python-stdnum checks.
_BBAN = {
    "DE": ("9", 18),  # bank code and account: digits
    "NL": ("A4 9", 10),
    "GB": ("A4 9", 14),
    "CH": ("9", 17),
}


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(_BBAN)))
    shape, digits = _BBAN[country]
    letters = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=4, max_size=4))
    bban = (letters if shape.startswith("A4") else "") + draw(
        st.text("0123456789", min_size=digits, max_size=digits)
    )
    number = country + iban.calc_check_digits(country + "00" + bban) + bban
    spaced = draw(st.booleans())
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4)) if spaced else number


@st.composite
def cards(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from("2345"))
    body = first + draw(st.text("0123456789", min_size=14, max_size=14))
    number = body + luhn.calc_check_digit(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


# Random text around the thing: anything, but separated from it by a space.
filler = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)

# What headlines hold: tickers, prices, percentages, dates, counts, words.
headline_tokens = st.one_of(
    st.from_regex(r"\$[A-Z]{1,5}", fullmatch=True),
    st.from_regex(r"[A-Z]{2,5}", fullmatch=True),
    st.from_regex(r"\$\d{1,4}(\.\d{2})?", fullmatch=True),
    st.from_regex(r"[-+]?\d{1,2}\.\d{1,2}%", fullmatch=True),
    st.from_regex(r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d)", fullmatch=True),
    st.from_regex(r"\d{1,3}(,\d{3}){0,4}", fullmatch=True),
    st.from_regex(r"Q[1-4] (19|20)\d\d", fullmatch=True),
    st.from_regex(r"\d{1,2}:\d\d", fullmatch=True),
    st.from_regex(r"[A-Za-z]{1,12}[.,:;!?]?", fullmatch=True),
    st.from_regex(r"\d{1,6}", fullmatch=True),
)
headlines = st.lists(headline_tokens, min_size=1, max_size=25).map(" ".join)


def _tokens(text: str) -> int:
    return sum(text.count(t) for t in TOKENS)


@CASES
@given(st.text(max_size=300))
@example("call 020 7946 0958 or jane@example.com, card 4111 1111 1111 1111")
@example("account no 1234567890 and +1 (212) 555-0187")
def test_masking_is_idempotent_and_bounded(text: str) -> None:
    once = MASKER.mask(text)
    assert MASKER.mask(once) == once
    assert len(once) <= len(text) + _tokens(once) - _tokens(text)


@CASES
@given(filler, emails, filler)
def test_any_email_in_any_text_is_masked(before: str, email: str, after: str) -> None:
    masked = MASKER.mask(f"{before} {email} {after}")
    assert email not in masked
    assert "[EMAIL]" in masked


@CASES
@given(filler, ibans(), filler)
def test_any_valid_iban_in_any_text_is_masked(before: str, number: str, after: str) -> None:
    assert iban.is_valid(number)
    masked = MASKER.mask(f"{before} {number} {after}")
    assert number not in masked
    assert "[IBAN]" in masked


@CASES
@given(filler, cards(), filler)
def test_any_luhn_valid_card_in_any_text_is_masked(before: str, number: str, after: str) -> None:
    masked = MASKER.mask(f"{before} {number} {after}")
    assert number not in masked
    assert "[CARD]" in masked


@CASES
@given(headlines)
@example("$AAPL up 3.2% to $182.50 on 2024-05-01; 12,345,678 shares traded")
@example("US10Y 4.25% Q3 2024 EPS $1.23 vs $1.10 est, revenue 1,234,567")
def test_headlines_without_personal_data_are_unchanged(text: str) -> None:
    assert MASKER.mask(text) == text


@CASES
@given(ibans())
def test_a_wrong_check_digit_is_not_masked(number: str) -> None:
    compact = number.replace(" ", "")
    wrong = compact[:2] + f"{(int(compact[2:4]) + 1) % 100:02d}" + compact[4:]
    if not iban.is_valid(wrong):  # almost always: one check-digit pair is right
        assert MASKER.mask(f"ref {wrong} done") == f"ref {wrong} done"
