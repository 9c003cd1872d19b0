"""Fuzzing the code that reads outside input: mutate valid inputs, count the crashes.

A :class:`FuzzTarget` is a name, a few valid seed inputs, a function that
feeds one case (bytes) to the real code path, and the errors that are a clean
refusal. :func:`fuzz` runs ``n`` cases from :func:`cases` (mutated seeds,
random bytes, generated documents) and counts what was accepted, what was
refused cleanly and what crashed (any other exception), never stopping at the
first crash. ``moodwire bench faults`` runs :func:`loader_targets` (the files
an operator hands over) and :func:`message_targets` (what arrives on Kafka: news
items through the validator into the stores, labels and control messages), built
the same way.

>>> def first_byte(data: bytes) -> int:
...     if data[:1] == b"#":
...         raise ValueError("a comment")
...     return data[0]  # IndexError on an empty case: a crash
>>> target = FuzzTarget("first byte", seeds=(b"8080", b"#x"), run=first_byte, clean=(ValueError,))
>>> result = fuzz(target, n=500, seed=1)
>>> result.cases == result.accepted + result.refused + result.crashes == 500
True
>>> result.crashes > 0, result.examples[0]["error"]
(True, 'IndexError: index out of range')
>>> fuzz(target, n=500, seed=1).crashes == result.crashes  # deterministic for a seed
True
"""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

MAX_EXAMPLES = 10

# Tokens that have broken parsers somewhere: control and quoting characters,
# byte-order marks, bytes that are not UTF-8, escapes of half a surrogate pair,
# numbers no float or int can hold, nesting past any recursion limit, YAML's
# anchors, aliases, merge keys, tags and look-alike dates and numbers.
HOSTILE_TOKENS: tuple[bytes, ...] = (
    b"\x00",
    b'"',
    b"'",
    b'""',
    b",",
    b";",
    b"\t",
    b"|",
    b"=",
    b"\\",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xfe\xff",
    b"\xe9",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    "\u2028".encode(),
    "\u0085".encode(),
    "\U0001f4a5".encode(),
    b"\x0c",
    b"\x1b[31m",
    b"\x7f",
    b"\\ud800",
    b'"\\udc00"',
    b'"\\ud83d"',
    b"\\u0000",
    b"1e999",
    b"-1e999",
    b"NaN",
    b"Infinity",
    b"1" * 400 + b".5",
    b"9" * 5000,
    b"[" * 5000,
    b"{" * 3000,
    b'{"a":' * 2000,
    b"- " * 1000,
    b"{}",
    b"[]",
    b"null",
    b"~",
    b"true",
    b"&a ",
    b"*a",
    b"&a [*a, *a, *a]",
    b"<<: *a",
    b"!!python/object/apply:os.system ['true']",
    b"!!binary x",
    b"!!timestamp x",
    b"!!int x",
    b"!!bool x",
    b"!!float ''",
    b"!custom ",
    b"%TAG ! tag:x,2000:\n",
    b"---\n",
    b"...\n",
    b"? ",
    b": ",
    b"- ",
    b"#",
    b"2001-13-45",
    b"2001-01-01 00:00:00 +99:00",
    b"0b_",
    b"0x_",
    b"1:2:3",
    b"$",
    b"$ $",
    b" " * 100,
    b"a" * 300,
)

_WORDS = (
    "ACME",
    "Acme Corp",
    "shares",
    "jump",
    "Rates; yields rise",
    'say "hi"',
    "line one\nline two",
    "café",
    "S&P 500",
    "$BRK.B",
    "",
    " ",
    "0",
    "1",
    "2",
    "positive",
    "Negative",
    "neutral",
    "bullish",
    "bear",
    "meh",
    "earnings",
    "other",
    "\x00",
    "\ud800",
    "\U0001f600",
    "\u2028",
    "\ufeff",
    "a,b|c;d\te",
    "x" * 200,
)
_KEYS = (
    "text",
    "label",
    "sentiment",
    "headline",
    "tweet",
    "class",
    "id",
    "ticker",
    "name",
    "aliases",
    "entities",
    "topics",
    "description",
    "examples",
    "<<",
    "",
)
_LABEL_NAMES = ("negative", "neutral", "positive", "bear", "Bullish", "neu", "POS", "happy", "")
_LAUGHS_MAX_CELLS = 100_000  # an alias bomb big enough to show, small enough for old code


@dataclass(frozen=True)
class FuzzTarget:
    """One code path under fuzzing.

    ``run`` feeds one case to the real code; an exception of a type in
    ``clean`` is a refusal, any other is a crash. ``generate`` builds a
    structure-aware case from a ``random.Random``; without one, :func:`document`
    makes CSV, JSON and YAML files.
    """

    name: str
    seeds: tuple[bytes, ...]
    run: Callable[[bytes], object]
    clean: tuple[type[BaseException], ...]
    generate: Callable[[random.Random], bytes] | None = None
    # Share of cases that ``generate`` builds (the rest: 10 % random bytes, mutated seeds).
    # Byte flips break most JSON at the parser; message targets generate more.
    generated: float = 0.3


@dataclass
class FuzzResult:
    """What ``n`` cases did to a target; ``kinds`` counts crashes by error and place."""

    target: str
    cases: int
    crashes: int
    accepted: int
    refused: int
    seconds: float
    examples: list[dict] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    slowest_case_s: float = 0.0


class MalformedResult(Exception):
    """A target accepted a case but returned something it promises never to return,
    or refused it with a message that breaks the one-line rule. Never clean.

    ``kind`` says which promise broke, without the case's details, so that
    :func:`fuzz` counts like with like.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


# -- mutation ---------------------------------------------------------------------------


# Flips and new bytes stay ASCII most of the time: a case that is not UTF-8 stops
# at the first check, and enough of them come from tokens and random bytes.
def _flip(data: bytearray, rng: random.Random) -> None:
    if data:
        data[rng.randrange(len(data))] ^= 1 << (rng.randrange(7) if rng.random() < 0.8 else 7)


def _set_byte(data: bytearray, rng: random.Random) -> None:
    if data:
        data[rng.randrange(len(data))] = (
            rng.randrange(32, 127) if rng.random() < 0.8 else rng.randrange(256)
        )


def _insert_token(data: bytearray, rng: random.Random) -> None:
    at = rng.randint(0, len(data))
    data[at:at] = rng.choice(HOSTILE_TOKENS)


def _insert_random(data: bytearray, rng: random.Random) -> None:
    at = rng.randint(0, len(data))
    data[at:at] = rng.randbytes(rng.randint(1, 8))


def _delete(data: bytearray, rng: random.Random) -> None:
    if data:
        start = rng.randrange(len(data))
        del data[start : start + rng.randint(1, 16)]


def _truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randint(0, len(data)) :]


def _duplicate(data: bytearray, rng: random.Random) -> None:
    if data:
        start = rng.randrange(len(data))
        chunk = data[start : start + rng.randint(1, 64)]
        at = rng.randint(0, len(data))
        data[at:at] = chunk * rng.choice((1, 2, 10, 100))


def _splice(data: bytearray, rng: random.Random) -> None:
    # Join a head and a tail of the same input: lines repeated or lost mid-record.
    if len(data) > 1:
        i, j = rng.randrange(len(data)), rng.randrange(len(data))
        data[:] = data[:i] + data[j:]


def _line_endings(data: bytearray, rng: random.Random) -> None:
    ending = rng.choice((b"\r\n", b"\r", b"\n"))
    parts = bytes(data).replace(b"\r\n", b"\n").split(b"\n")
    if rng.random() < 0.5:  # all lines alike
        data[:] = ending.join(parts)
    else:  # a mix
        out = bytearray(parts[0])
        for part in parts[1:]:
            out += rng.choice((b"\r\n", b"\r", b"\n")) + part
        data[:] = out


def _bom(data: bytearray, rng: random.Random) -> None:
    data[0:0] = rng.choice((b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"))


def _replace_word(data: bytearray, rng: random.Random) -> None:
    words = [i for i in range(1, len(data)) if chr(data[i - 1]).isspace() and data[i] > 32]
    if words:
        start = rng.choice(words)
        end = start
        while end < len(data) and data[end] > 32 and data[end] not in b",;:|\t\"'[]{}":
            end += 1
        data[start:end] = rng.choice(HOSTILE_TOKENS)


def _reencode(data: bytearray, rng: random.Random) -> None:
    text = bytes(data).decode("utf-8", "replace")
    encoding = rng.choice(("utf-16", "utf-16-le", "latin-1", "cp1252"))
    data[:] = text.encode(encoding, "replace")


_MUTATIONS: tuple[Callable[[bytearray, random.Random], None], ...] = (
    _flip,
    _set_byte,
    _insert_token,
    _insert_token,
    _insert_token,
    _insert_random,
    _delete,
    _truncate,
    _duplicate,
    _splice,
    _line_endings,
    _bom,
    _replace_word,
    _reencode,
)


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """``seed`` after one to four random mutations (flips, hostile tokens, cuts, splices...).

    >>> import random
    >>> a = mutate(b"text,label\\nup,positive\\n", random.Random(3))
    >>> a == mutate(b"text,label\\nup,positive\\n", random.Random(3)), isinstance(a, bytes)
    (True, True)
    """
    data = bytearray(seed)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):  # mostly one: most cases get past the parser
        rng.choice(_MUTATIONS)(data, rng)
    return bytes(data)


# -- generated documents ----------------------------------------------------------------


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.55:
        return rng.choice(_WORDS)
    if roll < 0.65:
        return rng.choice((0, 1, 2, -1, 10**30, 2**63, 1.0, 0.5, 1e300, float("inf"), float("nan")))
    if roll < 0.72:
        return rng.choice((None, True, False))
    if roll < 0.86 and depth < 3:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3:
        return {rng.choice(_KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return rng.choice(_WORDS)


def _record(rng: random.Random, keys: tuple[str, ...]) -> dict[str, Any]:
    record = {k: _value(rng) for k in rng.sample(keys, rng.randint(1, min(4, len(keys))))}
    if rng.random() < 0.3:
        record[rng.choice(_KEYS)] = _value(rng)
    return record


def csv_document(rng: random.Random, columns: tuple[str, ...] = _KEYS) -> bytes:
    """A CSV file: some of ``columns`` and stray names, rows of awkward values."""
    header = rng.sample(columns, rng.randint(1, min(4, len(columns))))
    if rng.random() < 0.2:
        header.append(rng.choice(_WORDS))
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter=rng.choice(",;\t|"),
        quoting=rng.choice((csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC)),
        lineterminator=rng.choice(("\n", "\r\n", "\r")),
    )
    writer.writerow(header)
    for _ in range(rng.randint(0, 6)):
        width = len(header) + rng.choice((0, 0, 0, -1, 1))
        row = [rng.choice(_WORDS + _LABEL_NAMES) for _ in range(max(width, 0))]
        writer.writerow(row)
    # A lone surrogate cannot be in a UTF-8 file: now and then as CESU-8 bytes, else "?".
    return out.getvalue().encode("utf-8", "surrogatepass" if rng.random() < 0.2 else "replace")


def json_document(rng: random.Random, keys: tuple[str, ...] = _KEYS) -> bytes:
    """A JSONL file, or one JSON array, of records with nested and extreme values."""
    records: list[Any] = [_record(rng, keys) for _ in range(rng.randint(0, 5))]
    if rng.random() < 0.1:
        records.append(_value(rng))
    ascii_only = rng.random() < 0.7  # else raw non-ASCII, surrogates as CESU-8 bytes
    if rng.random() < 0.3:
        text = json.dumps(records, ensure_ascii=ascii_only)
    else:
        end = rng.choice(("\n", "\r\n"))
        text = "".join(json.dumps(r, ensure_ascii=ascii_only) + end for r in records)
    return text.encode("utf-8", "surrogatepass")


def _yaml_scalar(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return json.dumps(rng.choice(_WORDS))  # a double-quoted YAML string
    if roll < 0.8:
        return rng.choice(("ACME", "007", "yes", "no", "~", "1e999", "2001-01-01", "0x1F"))
    return rng.choice(HOSTILE_TOKENS[-30:]).decode("utf-8", "replace")


def _yaml_laughs(rng: random.Random, key: str) -> str:
    width = rng.randint(2, 9)
    levels = 1
    while width ** (levels + 1) <= _LAUGHS_MAX_CELLS and levels < 9:
        levels += 1
    if rng.random() < 0.5:  # lists of lists of ... (billion laughs)
        lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
        for i in range(1, levels):
            lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
        lines.append(f"{key}: *l{levels - 1}")
    else:  # merge keys: each mapping merges the one before, width times
        lines = ["m0: &m0 {ticker: ACME, name: x}"]
        for i in range(1, levels):
            lines.append(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * width)}]}}")
        lines.append(f"{key}: [*m{levels - 1}]")
    return "\n".join(lines) + "\n"


def yaml_document(
    rng: random.Random, key: str = "entities", keys: tuple[str, ...] = _KEYS
) -> bytes:
    """A YAML file: records under ``key`` or at the top, in block or flow style,
    with anchors, aliases, tags and alias bombs."""
    roll = rng.random()
    if roll < 0.15:
        return _yaml_laughs(rng, key).encode()
    if roll < 0.5:
        import yaml  # the loaders' own dependency; only these cases need it

        records = [_record(rng, keys) for _ in range(rng.randint(0, 4))]
        data: Any = {key: records} if rng.random() < 0.5 else records
        try:
            text = yaml.safe_dump(
                data,
                default_flow_style=rng.choice((None, True, False)),
                allow_unicode=rng.random() < 0.5,
            )
        except yaml.YAMLError:
            text = ""
        return text.encode("utf-8", "surrogatepass")
    lines = [f"{key}:"] if rng.random() < 0.6 else []
    indent = "  " if lines else ""
    for i in range(rng.randint(0, 4)):
        fields = []
        for k in rng.sample(keys, rng.randint(1, min(3, len(keys)))):
            value = _yaml_scalar(rng)
            if rng.random() < 0.2:
                value = f"&a{i} {value}"
            elif rng.random() < 0.1:
                value = f"*a{rng.randint(0, 4)}"
            elif rng.random() < 0.2:
                value = f"[{value}, {_yaml_scalar(rng)}]"
            fields.append(f"{json.dumps(k) if rng.random() < 0.2 else k or '?'}: {value}")
        if rng.random() < 0.5:
            lines.append(f"{indent}- {{{', '.join(fields)}}}")
        else:
            lines.append(f"{indent}- {fields[0]}")
            lines.extend(f"{indent}  {f}" for f in fields[1:])
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def label_map_document(rng: random.Random) -> bytes:
    """A ``--label-map`` argument: ``RAW=LABEL`` entries with odd separators and names."""
    parts = []
    for _ in range(rng.randint(0, 5)):
        raw = rng.choice(("0", "1", "2", "up", "down", " ", "", "a=b", "\udcff", "x" * 50))
        sep = rng.choice(("=", "=", "=", "", "==", " = "))
        parts.append(f"{raw}{sep}{rng.choice(_LABEL_NAMES)}")
    return rng.choice((",", ", ", ",,", ";")).join(parts).encode("utf-8", "surrogateescape")


def document(rng: random.Random) -> bytes:
    """A generated file of a random format: CSV, JSON(L) or YAML."""
    return rng.choice((csv_document, json_document, yaml_document))(rng)


# -- running ----------------------------------------------------------------------------


def cases(target: FuzzTarget, n: int, seed: int) -> Iterator[bytes]:
    """``n`` cases for ``target``, the same ones for the same ``seed``.

    By default about 60 % are mutated seeds (sometimes two seeds spliced,
    sometimes mutated twice over), 10 % random bytes, 30 % generated documents
    (half of them mutated too); ``target.generated`` moves the share of the last.
    """
    rng = random.Random(seed)
    generate = target.generate or document
    seeded = 0.9 - target.generated
    for _ in range(n):
        roll = rng.random()
        if roll < seeded and target.seeds:
            data = rng.choice(target.seeds)
            if rng.random() < 0.15:
                other = rng.choice(target.seeds)
                data = data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]
            for _ in range(rng.choice((1, 1, 1, 1, 2))):
                data = mutate(data, rng)
            yield data
        elif roll < seeded + 0.1:
            yield rng.randbytes(rng.choice((0, 1, 2, 8, 64, 512)))
        else:
            data = generate(rng)
            yield mutate(data, rng) if rng.random() < 0.5 else data


def _place(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


def fuzz(target: FuzzTarget, n: int, seed: int = 0) -> FuzzResult:
    """Feed ``n`` cases to ``target``; count accepted, refused (a ``clean`` error) and crashed.

    A crash is any other exception; all ``n`` cases run whatever happens. The
    first example of each kind of crash (error type and the line raising it)
    is kept, up to ``MAX_EXAMPLES``.
    """
    accepted = refused = crashed = 0
    kinds: Counter[str] = Counter()
    examples: list[dict] = []
    slowest = 0.0
    start = time.perf_counter()
    for case in cases(target, n, seed):
        began = time.perf_counter()
        try:
            target.run(case)
        except target.clean:
            refused += 1
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - counting every crash is the point
            crashed += 1
            kind = getattr(exc, "kind", None) or f"{type(exc).__name__} at {_place(exc)}"
            if kind not in kinds and len(examples) < MAX_EXAMPLES:
                examples.append(
                    {
                        "error": f"{type(exc).__name__}: {exc}"[:300],
                        "where": _place(exc),
                        "input": repr(case)[:300],
                    }
                )
            kinds[kind] += 1
        else:
            accepted += 1
        slowest = max(slowest, time.perf_counter() - began)
    return FuzzResult(
        target=target.name,
        cases=n,
        crashes=crashed,
        accepted=accepted,
        refused=refused,
        seconds=round(time.perf_counter() - start, 3),
        examples=examples,
        kinds=dict(kinds.most_common()),
        slowest_case_s=round(slowest, 4),
    )


# -- the file loaders -------------------------------------------------------------------


class _CaseFile:
    """One temporary file, rewritten for every case; made on first use, not at import."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def write(self, data: bytes) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="moodwire-fuzz-")
        path = Path(self._dir.name) / f"case{self.suffix}"
        # A fresh inode each time: truncating a file that has data makes ext4 flush
        # it (auto_da_alloc), 2 ms a case on this project's machines.
        path.unlink(missing_ok=True)
        path.write_bytes(data)
        return path


def _expect(ok: bool, kind: str, detail: object) -> None:
    if not ok:
        raise MalformedResult(kind, repr(detail)[:200])


def _storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_refusal(exc: BaseException, source: str) -> None:
    """The one-line rule: one printable line, naming ``source``, of sane length."""
    message = str(exc)
    _expect("\n" not in message and "\r" not in message, "refusal not one line", message)
    _expect(_storable(message), "refusal not printable as UTF-8", message)
    _expect(source in message, "refusal does not name its source", message)
    _expect(len(message) <= 1000, "refusal longer than 1000 characters", message)


def _file_target(
    name: str,
    suffix: str,
    seeds: tuple[bytes, ...],
    load: Callable[[Path], Any],
    check: Callable[[Any], None],
    clean: tuple[type[BaseException], ...],
    generate: Callable[[random.Random], bytes],
) -> FuzzTarget:
    file = _CaseFile(suffix)

    def run(data: bytes) -> Any:
        path = file.write(data)
        try:
            result = load(path)
        except clean as exc:
            _check_refusal(exc, str(path))
            raise
        check(result)
        return result

    return FuzzTarget(name, seeds, run, clean, generate)


_NUMERIC_LABELS = {"0": "negative", "1": "neutral", "2": "positive"}

CSV_SEEDS = (
    b"text,label\nShares jump after earnings beat,positive\nDividend cut,negative\n"
    b"Meeting on Monday,neutral\n",
    b'id;headline;sentiment\r\n1;"Rates; yields rise";Bullish\r\n2;"say ""hi""";bear\r\n3;;\r\n',
    b"\xef\xbb\xbftweet\tclass\nACME up \xe2\x80\x94 again\t2\nGLBX down\t0\n",
    b'title|target\n"multi\nline"|pos\n|neu\nlast|NEU\n',
)
JSONL_SEEDS = (
    b'{"text": "Guidance raised", "label": 1}\n{"text": "Dividend cut", "label": 0.0}\n'
    b'{"text": "", "label": null}\n\n',
    b'[{"headline": "Up", "sentiment": "POS"}, '
    b'{"headline": "Down \\ud83d\\ude00", "sentiment": "neg", "entities": ["ACME"]}]',
    b'{"tweet": "caf\\u00e9 \xe2\x80\xa8 ok", "class": "bullish", "id": 7}\r\n'
    b'{"tweet": "flat", "class": "neutral", "id": 8}\r\n',
)
WATCHLIST_CSV_SEEDS = (
    b"ticker,name,aliases\nACME,Acme Corp,Acme|Acme Inc\nGLBX,Globex,\n\n",
    b"\xef\xbb\xbfticker\r\nHOOL\r\n$brk.b\r\n",
)
LABEL_MAP_SEEDS = (
    b"0=negative,1=positive,2=neutral",
    b"down=Bearish, up=bullish, flat=neutral",
    b"bear=neg,bull=pos,,",
)


def _default_file(name: str) -> bytes:
    return resources.files("stream").joinpath(f"defaults/{name}").read_bytes()


def _check_labelled(items: list[Any]) -> None:
    from learner.data import LABELS

    for item in items:
        _expect(isinstance(item.text, str) and bool(item.text.strip()), "empty text", item)
        _expect(_storable(item.text), "text not UTF-8", item)
        _expect(item.label in LABELS, "label not one of LABELS", item)


def _check_watchlist(watch: Any) -> None:
    from stream.entities import EntityTagger, canonical_ticker

    tagger = EntityTagger(watch)
    for ticker in watch.tickers():
        _expect(isinstance(ticker, str) and bool(ticker), "empty ticker", ticker)
        _expect(canonical_ticker(ticker) == ticker, "ticker not canonical", ticker)
        _expect(
            ticker.isprintable() and not any(c.isspace() for c in ticker),
            "ticker with blanks or unprintable characters",
            ticker,
        )
        _expect(ticker in watch, "ticker not found in its own list", ticker)
        name = watch.name(ticker)
        _expect(isinstance(name, str) and bool(name.strip()), "empty name", (ticker, name))
        _expect(_storable(name), "name not UTF-8", (ticker, name))
        tagger.tag(f"{name} and ${ticker} move")


def _check_taxonomy(taxonomy: Any) -> None:
    from stream.topics import OTHER, TopicModel, toy_embed

    names = taxonomy.names()
    _expect(len(set(names)) == len(names) and OTHER not in names, "topic names clash", names)
    for topic in taxonomy.topics:
        _expect(bool(topic.name) and topic.name == topic.name.strip(), "blank name", topic)
        _expect(bool(topic.description or topic.examples), "topic without text", topic)
        for text in (topic.name, topic.description, *topic.examples):
            _expect(isinstance(text, str) and _storable(text), "text not UTF-8", text)
    TopicModel(taxonomy, toy_embed).assign(toy_embed(["stocks rally"]))


def _check_label_map(mapping: dict[str, str] | None) -> None:
    from learner.data import LABELS

    for raw, label in (mapping or {}).items():
        _expect(bool(raw) and raw == raw.strip(), "blank raw value", raw)
        _expect(_storable(raw), "raw value not UTF-8", raw)
        _expect(label in LABELS, "label not one of LABELS", label)


def loader_targets() -> list[FuzzTarget]:
    """Every loader of outside files: labelled CSV and JSONL, watch lists, the taxonomy,
    and the ``--label-map`` option (as the shell hands it over: bytes, undecodable
    ones as surrogate escapes)."""
    from learner.data import DataError, load_labelled, parse_label_map
    from stream.entities import WatchList
    from stream.errors import ConfigFileError
    from stream.topics import Taxonomy

    def labelled(path: Path) -> Any:
        return load_labelled(path, label_map=_NUMERIC_LABELS)

    watch_keys = ("ticker", "name", "aliases", "entities", "")
    topic_keys = ("name", "description", "examples", "topics", "")
    watch_yaml = _default_file("watchlist.yaml")
    topics_yaml = _default_file("topics.yaml")
    small_watch = (
        b"- ticker: ACME\n  name: Acme Corp\n  aliases: [Acme]\n- ticker: $glbx\n  name: Globex\n",
        b"entities:\n  - {ticker: ACME, name: Acme Corp, aliases: [Acme]}\n"
        b"  - {ticker: BRK.B, name: 'Berkshire Hathaway'}\n",
    )
    small_topics = (
        b"- name: earnings\n  description: Quarterly results.\n"
        b"- name: markets\n  examples: [stocks rally, futures slide]\n",
        b"topics:\n  - {name: earnings, examples: [profit beats]}\n",
    )

    def label_map(data: bytes) -> Any:
        try:
            mapping = parse_label_map(data.decode("utf-8", "surrogateescape"))
        except DataError as exc:
            _check_refusal(exc, "label map")
            raise
        _check_label_map(mapping)
        return mapping

    return [
        _file_target(
            "csv_loader",
            ".csv",
            CSV_SEEDS,
            labelled,
            _check_labelled,
            (DataError,),
            lambda rng: csv_document(rng, ("text", "label", "sentiment", "headline", "id", "")),
        ),
        _file_target(
            "jsonl_loader",
            ".jsonl",
            JSONL_SEEDS,
            labelled,
            _check_labelled,
            (DataError,),
            lambda rng: json_document(rng, ("text", "label", "tweet", "class", "id", "entities")),
        ),
        _file_target(
            "watchlist_yaml",
            ".yaml",
            (watch_yaml, *small_watch),
            WatchList.load,
            _check_watchlist,
            (ConfigFileError,),
            lambda rng: yaml_document(rng, "entities", watch_keys),
        ),
        _file_target(
            "watchlist_csv",
            ".csv",
            WATCHLIST_CSV_SEEDS,
            WatchList.load,
            _check_watchlist,
            (ConfigFileError,),
            lambda rng: csv_document(rng, watch_keys),
        ),
        _file_target(
            "taxonomy_yaml",
            ".yaml",
            (topics_yaml, *small_topics),
            Taxonomy.load,
            _check_taxonomy,
            (ConfigFileError,),
            lambda rng: yaml_document(rng, "topics", topic_keys),
        ),
        FuzzTarget("label_map", LABEL_MAP_SEEDS, label_map, (DataError,), label_map_document),
    ]


# -- the messages on Kafka --------------------------------------------------------------


class Refused(Exception):
    """A message target refused its case the way the product does (a dead letter, a
    ``Rejected``): clean, and counted as refused."""


_NOW_ISO = "2026-03-02T09:00:00+00:00"
_MSG_TEXTS = (
    "ACME beats estimates",
    "Globex cuts its outlook, shares slide",
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ud83d\ude00 up",
    "\ufeff",
    "\u202e",
    "\r\n",
    "\u2028",
    "ß" * 40,
    "$" + "Q" * 70,
    "x" * 300,
    "9" * 5000,
)
_MSG_NUMBERS = (
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    2**64,
    10**30,
    1_586_912_626_000,
    1.5,
    1e308,
    -1e308,
    10**400,
    float("nan"),
    float("inf"),
    float("-inf"),
)
_MSG_TIMES = (
    _NOW_ISO,
    "2026-03-02T09:00:00Z",
    "2020-04-15 01:03:46",
    "9999-12-31T23:59:59-05:00",
    "0001-01-01T00:00:00+01:00",
    "+10000-01-01T00:00:00",
    "2999-01-01T00:00:00Z",
    "2020-02-30",
    "now",
    "",
    1_586_912_626,
    1_586_912_626_000,
    -1,
    1e308,
    True,
    float("nan"),
)
# Plausible values per field, so that most cases reach the code behind the parser.
_MSG_FIELDS: dict[str, tuple[Any, ...]] = {
    "id": ("demo-1", "a" * 256, "a" * 257, "a\x00b", "a\ud800", "tab\there", "é", 7),
    "item_id": ("demo-1", "a" * 257, "a\x00b", "\udfff", "", 7),
    "text": _MSG_TEXTS,
    "ts": _MSG_TIMES,
    "source": ("demo-wire", "s" * 64, "s" * 65, "s" * 257, "wi\x00re", "", None),
    "entities": (["ACME"], ["$glbx ", "ACME"], ["AC\x00ME", "\udfff"], ["ß" * 40], ["E"] * 100, []),
    "meta": ({"phase": "news"}, {"k\x00": ["\ud800", {"\udc00": 1}]}, {"n": 2**64}, {}),
    "label": ("negative", "neutral", "positive", "Positive", "bullish", "", None, 1),
    "topic": ("earnings", "markets", "t" * 65, "", None),
    "annotator": ("ann", "a\x00n", "a" * 257, None),
    "action": ("promote", "rollback", "retrain", "drift", "reload", "delete", "", None),
    "version": ("v1", "v2", "v" + "9" * 80, "../../etc", "\ud800", None),
    "actor": ("alice", "learner", "a" * 257, "", None),
    "reason": ("drift seen", "r" * 4001, "\x00", None),
    "details": ({"gate": {"passed": True}}, {"a": [1, 2.5, "x\x00"]}, {"deep": 1}, {}),
}
NEWS_KEYS = ("id", "text", "ts", "source", "entities", "meta")
LABEL_KEYS = ("item_id", "text", "label", "topic", "source", "annotator", "ts")
CONTROL_KEYS = ("action", "version", "actor", "reason", "details", "ts")


def _hostile_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(_MSG_TEXTS)
    if roll < 0.6:  # non-finite ones (the JSON literals NaN, Infinity) now and then only
        return rng.choice(_MSG_NUMBERS if rng.random() < 0.2 else _MSG_NUMBERS[:11])
    if roll < 0.68:
        return rng.choice((None, True, False))
    if roll < 0.72:  # nesting past every limit (a JSON decoder's, a store's, MAX_META_DEPTH)
        inner: Any = "x"
        for _ in range(rng.choice((15, 16, 17, 40, 300, 900))):
            inner = [inner] if rng.random() < 0.5 else {"a": inner}
        return inner
    if roll < 0.86 and depth < 3:
        return [_hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3:
        return {rng.choice(_MSG_TEXTS[:8]): _hostile_value(rng, depth + 1) for _ in range(3)}
    return rng.choice(_MSG_TEXTS)


def message_document(
    rng: random.Random, keys: tuple[str, ...], bases: tuple[dict[str, Any], ...] = ()
) -> bytes:
    """A JSON message over ``keys``: half the time one of ``bases`` (valid messages) with a
    field or two replaced, dropped or added, else a fresh one. Values are plausible for
    their field or hostile (NUL, lone surrogates, huge numbers, NaN, deep nesting,
    absurd times); written with ASCII escapes or as raw UTF-8 (lone surrogates as CESU-8
    bytes, which no UTF-8 decoder takes)."""

    def value(key: str) -> Any:
        pool = _MSG_FIELDS.get(key, ())
        return rng.choice(pool) if pool and rng.random() < 0.6 else _hostile_value(rng)

    if bases and rng.random() < 0.5:
        doc = dict(rng.choice(bases))
        for _ in range(rng.randint(1, 2)):
            key, roll = rng.choice(keys), rng.random()
            if roll < 0.7:
                doc[key] = value(key)
            elif roll < 0.9:
                doc.pop(key, None)
            else:
                doc[rng.choice(_MSG_TEXTS[:2])] = _hostile_value(rng)
    else:
        chosen = keys if rng.random() < 0.3 else rng.sample(keys, rng.randint(0, len(keys)))
        doc = {key: value(key) for key in chosen}
        if rng.random() < 0.1:
            doc[rng.choice(_MSG_TEXTS[:2])] = _hostile_value(rng)
    payload: Any = doc if rng.random() < 0.97 else [doc]
    text = json.dumps(payload, ensure_ascii=rng.random() < 0.7, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def _bases(seeds: tuple[bytes, ...]) -> tuple[dict[str, Any], ...]:
    """The seeds that are JSON objects, as dicts: what structure-aware cases start from."""
    out = []
    for seed in seeds:
        try:
            doc = json.loads(seed)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return tuple(out)


# One of each class of hostile message the worker met (tests/stream/test_hostile_input.py).
HOSTILE_NEWS: tuple[bytes, ...] = (
    b'{"text": "x", "ts": 1e308}',
    b'{"text": "x", "ts": -1}',
    b'{"text": "x", "ts": ' + b"9" * 400 + b"}",
    b'{"text": "x", "ts": Infinity}',
    b'{"text": "x", "ts": 1e999}',
    b'{"text": "x", "ts": "9999-12-31T23:59:59-05:00"}',
    b'{"text": "x", "ts": "+10000-01-01T00:00:00"}',
    b'{"text": "profit\x00 warning"}',
    b'{"text": "profit\\u0000 warning", "source": "wi\\u0000re"}',
    b"\x00",
    b'{"text": "x", "id": "a\\ud800"}',
    b'{"text": "shares \\ud83d up", "entities": ["AC\\u0000ME", "\\udfff"]}',
    b'{"text": "x", "meta": {"v": NaN}}',
    b"[" * 30_000 + b"]" * 30_000,
    b'{"text": "x", "meta": {"a": ' + b"[" * 255 + b"]" * 255 + b"}}",
    b'{"text": "x", "meta": {"n": ' + b"7" * 5000 + b"}}",
    b'{"text": "x", "meta": {"n": 18446744073709551616}}',
    json.dumps({"text": "x", "entities": ["\u00df" * 40]}).encode(),
    b'{"text": "x", "meta": {"k\\u0000": ["\\ud800", {"\\udc00": 1}]}}',
    b'{"text": "a\\u0001\\u001f\\u007f\\u202e b"}',
)


def _fixed_times(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # demo_feed stamps items with the current time; seeds must not change between runs.
    return [{**item, "ts": f"2026-03-02T09:{i % 60:02d}:00+00:00"} for i, item in enumerate(items)]


def _news_seeds() -> tuple[bytes, ...]:
    from stream.synthetic import demo_feed

    valid = [json.dumps(i).encode() for i in _fixed_times(demo_feed(6, seed=5))]
    valid.append(b'{"text": "ACME shares jump"}')  # the least a feed may send
    return (*valid, *HOSTILE_NEWS)


LABEL_SEEDS: tuple[bytes, ...] = (
    b'{"item_id": "demo-5-0", "label": "positive", "source": "analyst", "annotator": "ann"}',
    b'{"text": "Globex cuts its outlook", "label": "negative", "source": "feed", '
    b'"ts": "2026-03-02T09:00:00Z"}',
    b'{"item_id": "demo-5-1", "topic": "earnings", "annotator": "ann"}',
    b'{"text": "profit\\u0000 warning", "label": "negative", "annotator": "a\\u0000n"}',
    b'{"text": "x", "label": "negative", "ts": "9999-12-31T23:59:59-05:00"}',
    b'{"text": "x", "label": "negative", "ts": 1e308}',
    b'{"item_id": "a\\u0000", "label": "negative"}',
    b'{"text": "\\ud83d up", "label": "positive", "source": "' + b"s" * 65 + b'"}',
    b'{"text": "x", "label": "neutral", "ts": NaN}',
)
CONTROL_SEEDS: tuple[bytes, ...] = (
    b'{"action": "promote", "version": "v2", "actor": "alice", "reason": "better"}',
    b'{"action": "retrain", "actor": "alice", "reason": "drift on ACME"}',
    b'{"action": "drift", "actor": "learner", "version": "v1", "reason": "adwin on error_rate",'
    b' "details": {"statistic": 0.2, "window": [1, 2]}, "ts": "2026-03-02T09:00:00Z"}',
    b'{"action": "rollback"}',
    b'{"action": "reload", "details": {"k\\u0000": ["\\ud800"]}}',
    b'{"action": "promote", "details": {"n": ' + b"7" * 5000 + b"}}",
    b'{"action": "promote", "details": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}",
    b'{"action": "retrain", "ts": 1e308, "reason": "\\udfff"}',
)
_KAFKA_TIMES = (None, 0, -1, 2**63 - 1, 1_772_442_000_000)


def message_targets(stores: list[Any]) -> list[FuzzTarget]:
    """The three ways Kafka bytes get in: news items through the validator, labels and
    control messages. What is accepted must be storable in every store of ``stores``
    (SQLite and PostgreSQL :class:`state.store.Store`) and publishable; what is
    refused must be too, as its dead letter.

    * ``validator``: :func:`stream.validate.validate` (a crash: any exception, or a
      ``Rejected`` with reason ``unexpected``); accepted, the item must become a
      scored message (``model_dump_json``, UTF-8 JSON that reads back) and an items
      row that :meth:`Store.write_batch` stores and reads back; rejected, its dead letter
      (:func:`stream.deadletter.rejection_row`) must store and make a DLQ message.
    * ``label_message``: :func:`stream.validate.parse_message` then :func:`label_row`
      into :meth:`Store.add_labels` (clean: a ``ValueError`` with its reason).
    * ``control_message``: :func:`stream.validate.parse_message`, then
      ``model_dump_json`` must read back as the same command (clean: ``ValueError``).
    """
    import itertools
    from datetime import UTC, datetime

    import numpy as np

    from stream.deadletter import dlq_message, rejection_row
    from stream.entities import EntityTagger, WatchList
    from stream.schemas import ControlMessage, LabelMessage, label_row
    from stream.validate import Accepted, Limits, parse_message, validate
    from stream.worker import item_row, scored_item

    limits = Limits(max_message_bytes=64 * 1024, max_text_chars=4000, max_entities=64)
    labels = ("negative", "neutral", "positive")
    probs = np.array([0.2, 0.3, 0.5], dtype=np.float32)
    vector = np.zeros(384, dtype=np.float32)
    tagger = EntityTagger(WatchList.default())
    # Dead letters are keyed by their source position: every case gets a new one.
    offsets = itertools.count(time.time_ns() // 1000)

    def news(data: bytes) -> Any:
        kafka_ts = _KAFKA_TIMES[len(data) % len(_KAFKA_TIMES)]
        now = datetime.now(UTC)
        outcome = validate(data, kafka_ts_ms=kafka_ts, limits=limits, now=now)
        offset = next(offsets)
        if not isinstance(outcome, Accepted):
            _expect(outcome.reason != "unexpected", "validation failed unexpectedly", outcome)
            row = rejection_row("news", 0, offset, data, outcome.reason, outcome.detail, now)
            for store in stores:
                _, _, seqs = store.write_batch([], [row])
                _expect(len(seqs) == 1, "dead letter not stored", (store.dialect, seqs))
                (stored,) = store.rejections_by_seq(seqs)
                back = json.loads(dlq_message(stored, "news.dlq").value.decode("utf-8"))
                _expect(back["raw_bytes"] == len(data), "dead letter lost bytes", back)
            raise Refused(outcome.reason)
        item = outcome.item
        _expect(bool(item.text.strip()) and item.ts is not None, "accepted an empty item", item)
        entities = tagger.tag(item.text, list(item.entities))
        scored = scored_item(
            outcome,
            probs,
            labels,
            version="v1",
            entities=entities,
            topic=None,
            neighbors=[],
            scored_at=now,
        )
        back = json.loads(scored.model_dump_json().encode("utf-8"))
        _expect(back["id"] == outcome.id and back["text"] == item.text, "scored message", back)
        row = item_row(scored, probs, vector, partition=0, offset=offset, kafka_ts=now)
        for store in stores:
            new, _, _ = store.write_batch([row], [])
            stored = store.get_item(outcome.id)
            _expect(stored is not None, "accepted item not stored", (store.dialect, outcome.id))
            if new:  # an id seen in an earlier case keeps that case's row
                _expect(stored["text"] == item.text, "stored text differs", store.dialect)
        return outcome

    def label(data: bytes) -> Any:
        msg = parse_message(LabelMessage, data)  # as the learner reads them
        row = label_row(msg)
        for store in stores:
            store.add_labels([row])
        return row

    def control(data: bytes) -> Any:
        msg = parse_message(ControlMessage, data)  # as the learner reads them
        dumped = msg.model_dump_json().encode("utf-8")
        _expect(ControlMessage.model_validate_json(dumped) == msg, "round trip changed it", dumped)
        return msg

    def target(name: str, seeds: tuple[bytes, ...], run: Any, clean: Any, keys: Any) -> FuzzTarget:
        bases = _bases(seeds)
        return FuzzTarget(
            name, seeds, run, clean, lambda rng: message_document(rng, keys, bases), generated=0.6
        )

    return [
        target("validator", _news_seeds(), news, (Refused,), NEWS_KEYS),
        target("label_message", LABEL_SEEDS, label, (ValueError,), LABEL_KEYS),
        target("control_message", CONTROL_SEEDS, control, (ValueError,), CONTROL_KEYS),
    ]


def all_targets(stores: list[Any]) -> list[FuzzTarget]:
    """Every target ``moodwire bench faults`` runs: the file loaders, then the messages."""
    return [*loader_targets(), *message_targets(stores)]


def main(argv: list[str] | None = None) -> int:
    """``python -m moodwire.bench.fuzz [--cases N] [--seed S] [--store URL] [TARGET ...]``: results
    as JSON lines, exit 1 on any crash."""
    import argparse
    from dataclasses import asdict

    parser = argparse.ArgumentParser(prog="python -m moodwire.bench.fuzz", description=main.__doc__)
    parser.add_argument("targets", nargs="*", help="target names (default: every target)")
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target (10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cases (0)")
    parser.add_argument(
        "--store",
        action="append",
        default=[],
        metavar="URL",
        help="a store the message targets must write to as well (repeatable; a temporary "
        "SQLite store always); its tables are created, its rows are left there",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moodwire-fuzz-") as tmp:
        from state.store import Store

        stores = [Store(f"sqlite:///{Path(tmp) / 'fuzz.db'}"), *map(Store, args.store)]
        known = all_targets(stores)
        targets = [t for t in known if not args.targets or t.name in args.targets]
        unknown = set(args.targets) - {t.name for t in known}
        if unknown:
            parser.error(f"unknown targets {sorted(unknown)}")
        crashes = 0
        for target in targets:
            result = fuzz(target, args.cases, args.seed)
            crashes += result.crashes
            print(json.dumps(asdict(result)), flush=True)
        for store in stores:
            store.engine.dispose()
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
