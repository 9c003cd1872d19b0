"""Opt-in masking of personal data in an item before it is scored, stored or published.

:class:`Masker` replaces what it finds with a token and leaves everything else
as it was (tickers, prices, dates, percentages, ordinary numbers):

* ``[EMAIL]`` — an e-mail address;
* ``[IBAN]`` — an IBAN whose country format and mod-97 check digits are valid
  (``python-stdnum``), with or without the usual spaces;
* ``[CARD]`` — a 13–19 digit card number (spaces or dashes between groups) that
  starts like a card (2–6) and passes the Luhn check;
* ``[PHONE]`` — a phone number that Google's libphonenumber (``phonenumbers``)
  finds with strict grouping: international (``+44 20 7946 0958``) or in the
  national format of one of ``phone_regions``; and any 7–15 digit run right
  after a phone word ("call", "tel", "text me at", "WhatsApp", …);
* ``[ACCOUNT]`` — an 8–20 digit run right after an account word ("account",
  "acct", "a/c", "Konto", "sort code", …).

Cards, phones and accounts inside a URL are left alone (a tweet's status id is
a 19-digit run); e-mail addresses and IBANs are masked wherever they are.

Names are not masked: no maintained library finds them offline without a
model download (Presidio needs a spaCy model, which is not on PyPI).

>>> m = Masker()
>>> m.mask("Write to jane.doe@example.com or call +44 20 7946 0958")
'Write to [EMAIL] or call [PHONE]'
>>> m.mask("Pay DE89 3704 0044 0532 0130 00 by card 4111 1111 1111 1111")
'Pay [IBAN] by card [CARD]'
>>> m.mask("$AAPL up 3.2% to $182.50 on 2024-05-01; 12,345,678 shares traded")
'$AAPL up 3.2% to $182.50 on 2024-05-01; 12,345,678 shares traded'
>>> m.mask("Refund to account no. 12345678")
'Refund to account no. [ACCOUNT]'

Masking is idempotent, and each token is at most one character longer than
what it replaces, so ``len(mask(t)) <= len(t) + number of tokens``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

TOKENS = ("[EMAIL]", "[PHONE]", "[IBAN]", "[CARD]", "[ACCOUNT]")
DEFAULT_PHONE_REGIONS = ("US", "GB", "FR")

# Atomic groups and possessive quantifiers: no backtracking blow-up on long runs.
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]++@(?>[A-Za-z0-9](?>[A-Za-z0-9-]*+)\.)++[A-Za-z]{2,24}+(?![\w-])"
)
# Two letters, two check digits, then 11-30 letters or digits in groups of up to four.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}+")
# 13-19 digits in one run, or grouped as cards print them (4-4-4-4[-3], 4-6-5, 4-6-4) with
# spaces or dashes; not part of a longer number.
_CARD = re.compile(
    r"(?<![\w.,/-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{4}([ -])\d{6}\2\d{4,5})"
    r"(?![\d%]|[.,]\d)"
)
_URL = re.compile(r"(?:https?://|www\.)\S++", re.IGNORECASE)
_SEP = r"[ \t]*(?:no\.?|nr\.?|num(?:ber)?\.?|#|:)?[ \t]*[:#]?[ \t]*"
_PHONE_WORD = re.compile(
    r"\b(?:call(?:\s+us)?(?:\s+(?:at|on))?|phone|tel|telephone|mobile|cell|fax|ring|"
    r"whats\s?app|text\s+(?:me|us)(?:\s+(?:at|on))?|sms|contact(?:\s+us)?(?:\s+(?:at|on))?)"
    + _SEP
    + r"(?P<num>\+?\(?\d(?:[ ().-]?\d){6,14}+)(?![\d%]|[.,]\d)",
    re.IGNORECASE,
)
_ACCOUNT_WORD = re.compile(
    r"\b(?:(?:bank\s+)?account|acct|acc\.?(?=\s*(?:no|nr|#))|a/c|konto(?:nummer)?|compte|"
    r"routing|sort\s+code|bsb|aba)" + _SEP + r"(?P<num>\d(?:[ -]?\d){7,19}+)(?![\d%]|[.,]\d)",
    re.IGNORECASE,
)
_DIGITS7 = re.compile(r"(?:\d\D*+){7}")
# A run that could hold a phone number: 7-17 digits, a few separators between them.
_PHONE_RUN = re.compile(r"\+?\(?\d(?:[ ().\-/]{0,2}+\d){6,16}+")
_MAX_RUNS = 8  # more than this in one text: international numbers only (see _phones)


def _spans_overlap(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in taken)


class Masker:
    """Finds personal data in text and replaces it with tokens; pure and thread-safe.

    ``phone_regions`` are ISO 3166 region codes whose national phone formats
    are recognised (international ``+`` numbers are found whatever they are).

    >>> Masker(phone_regions=("US",)).mask("call (415) 555-2671 today")
    'call [PHONE] today'
    >>> Masker(phone_regions=("XX",))
    Traceback (most recent call last):
    ...
    ValueError: unknown phone region(s) 'XX': use ISO 3166 codes such as US, GB, DE, FR
    """

    def __init__(self, phone_regions: Iterable[str] = DEFAULT_PHONE_REGIONS) -> None:
        self.phone_regions = check_regions(phone_regions)

    def __repr__(self) -> str:
        return f"Masker(phone_regions={self.phone_regions!r})"

    def mask(self, text: str) -> str:
        """``text`` with every e-mail, IBAN, card, phone and account number replaced."""
        if not text:
            return text
        found: list[tuple[int, int, str]] = []  # (start, end, token), non-overlapping
        taken: list[tuple[int, int]] = []

        def add(start: int, end: int, token: str) -> None:
            if not _spans_overlap((start, end), taken):
                found.append((start, end, token))
                taken.append((start, end))

        if "@" in text:
            for m in _EMAIL.finditer(text):
                add(m.start(), m.end(), "[EMAIL]")
        for m in _IBAN.finditer(text):
            end = _valid_iban_end(m.group(), text[m.end() : m.end() + 1])
            if end:
                add(m.start(), m.start() + end, "[IBAN]")
        if _DIGITS7.search(text) is not None:
            urls = [m.span() for m in _URL.finditer(text)]
            for m in _CARD.finditer(text):
                digits = re.sub(r"\D", "", m.group())
                if digits[0] in "23456" and luhn.is_valid(digits) and not _in(m.span(), urls):
                    add(m.start(), m.end(), "[CARD]")
            for m in _ACCOUNT_WORD.finditer(text):
                if not _in(m.span("num"), urls):
                    add(m.start("num"), m.end("num"), "[ACCOUNT]")
            for start, end in self._phones(text):
                if not _in((start, end), urls):
                    add(start, end, "[PHONE]")
        if not found:
            return text
        out, at = [], 0
        for start, end, token in sorted(found):
            out.append(text[at:start])
            out.append(token)
            at = end
        out.append(text[at:])
        return "".join(out)

    def _phones(self, text: str) -> list[tuple[int, int]]:
        spans = [m.span("num") for m in _PHONE_WORD.finditer(text)]
        runs = list(_PHONE_RUN.finditer(text))
        if not runs:  # every phone number holds such a run
            return spans
        if len(runs) <= _MAX_RUNS:
            for region in self.phone_regions:
                spans += self._matches(text, 0, text, region)
        else:
            # Many digit runs (a table, or a hostile item): libphonenumber's matcher costs
            # about a millisecond a run and region, so only international numbers are
            # looked for, each run on its own.
            for run in runs:
                if run.group().startswith("+"):
                    spans += self._matches(run.group(), run.start(), text, None)
        return spans

    @staticmethod
    def _matches(chunk: str, at: int, text: str, region: str | None) -> list[tuple[int, int]]:
        out = []
        for match in phonenumbers.PhoneNumberMatcher(
            chunk, region, leniency=phonenumbers.Leniency.STRICT_GROUPING
        ):
            start, end = at + match.start, at + match.end
            before = text[start - 1] if start else " "
            after = text[end] if end < len(text) else " "
            digits = sum(c.isdigit() for c in match.raw_string)
            # Not a piece of a price, a ratio, a range, a word or a longer number.
            alone = not before.isalnum() and before not in "$€£.,/-:" and not after.isalnum()
            if digits >= 7 and alone:
                out.append((start, end))
        return out

    def mask_json(self, value: Any) -> Any:
        """Every string in a JSON value (keys too) masked."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, list | tuple):
            return [self.mask_json(v) for v in value]
        if isinstance(value, dict):
            return {self.mask(str(k)): self.mask_json(v) for k, v in value.items()}
        return value

    def mask_id(self, item_id: str) -> str:
        """A feed's id unchanged, or, when it holds personal data, a stable hash of it.

        The hash keeps distinct items distinct (a masked id could collide).

        >>> Masker().mask_id("feed-1"), Masker().mask_id("jane@example.com")[:7]
        ('feed-1', 'masked-')
        """
        if self.mask(item_id) == item_id:
            return item_id
        return "masked-" + hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:24]

    def preview(self, raw: bytes, limit: int) -> str:
        """A readable, masked preview of a raw message value (for a dead letter).

        A JSON value is decoded first, so an escaped ``\\u0040`` hides nothing;
        anything else is masked as text. The text is masked before it is cut,
        so no address is cut in half past the mask.

        >>> Masker().preview(b'{"text": "mail jane\\\\u0040example.com"}', 100)
        '{"text": "mail [EMAIL]"}'
        """
        text = raw[: limit * 4 + 1024].decode("utf-8", errors="replace")
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError):
            text = text.replace("\\u0040", "@")  # an escaped @ in JSON that does not parse
            return self.mask(text[: limit + 256])[:limit]
        dumped = json.dumps(self.mask_json(decoded), ensure_ascii=False)
        return dumped[:limit]


def _valid_iban_end(candidate: str, after: str) -> int:
    """The length of the longest valid IBAN that ``candidate`` starts with (0: none).

    The pattern takes every group it can ("DE89 3704 0044 0532 0130 00 12" holds one
    and a number after it), so shorter cuts at a space are tried too; the IBAN must
    end where a word does.
    """
    for end in range(len(candidate), 14, -1):
        nxt = candidate[end] if end < len(candidate) else after
        ends_word = candidate[end - 1] != " " and not nxt.isalnum()
        if ends_word and stdnum_iban.is_valid(candidate[:end]):
            return end
    return 0


def _in(span: tuple[int, int], urls: list[tuple[int, int]]) -> bool:
    return any(start <= span[0] and span[1] <= end for start, end in urls)


def check_regions(regions: Iterable[str]) -> tuple[str, ...]:
    """Region codes upper-cased and checked against libphonenumber's; ``ValueError`` if unknown."""
    codes = tuple(r.strip().upper() for r in regions if r.strip())
    supported = phonenumbers.SUPPORTED_REGIONS
    unknown = [c for c in codes if c not in supported]
    if unknown:
        raise ValueError(
            f"unknown phone region(s) {', '.join(repr(c) for c in unknown)}: "
            "use ISO 3166 codes such as US, GB, DE, FR"
        )
    return codes


def raw_digest(raw: bytes | None) -> str:
    """The sha256 of a raw value, hex: finds the original on its topic without keeping it.

    >>> raw_digest(b"")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(bytes(raw or b"")).hexdigest()
