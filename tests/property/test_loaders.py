"""Every loader of outside files either loads a hostile file or refuses it cleanly.

"Cleanly" means the loader's documented error (``DataError`` for labelled
data, ``ConfigFileError`` for watch lists and taxonomies) with a one-line,
printable message naming the file; never any other exception. What loads is
well formed: non-empty texts, labels among ``LABELS``, canonical tickers,
distinct topic names. Inputs: random bytes, valid files mutated (hostile
tokens inserted, cuts, flipped bits, BOMs, line endings), generated files
(CSV, JSON, YAML with nesting, extreme numbers, half surrogates), and known
hostile documents (alias bombs, tags, deep nesting).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from learner.data import LABELS, DataError, load_labelled, parse_label_map, read_records
from moodwire.bench.fuzz import CSV_SEEDS, HOSTILE_TOKENS, JSONL_SEEDS, LABEL_MAP_SEEDS
from moodwire.bench.fuzz import WATCHLIST_CSV_SEEDS as WATCH_CSV_SEEDS
from stream.entities import EntityTagger, WatchList, canonical_ticker
from stream.errors import ConfigFileError
from stream.topics import OTHER, Taxonomy, TopicModel, toy_embed

CASES = settings(
    max_examples=250,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEFAULTS = Path(__file__).resolve().parents[2] / "stream" / "defaults"
WATCH_YAML_SEEDS = (
    (DEFAULTS / "watchlist.yaml").read_bytes(),
    b"- ticker: ACME\n  name: Acme Corp\n  aliases: [Acme]\n- ticker: $glbx\n  name: Globex\n",
    b"entities:\n  - {ticker: ACME, name: Acme Corp, aliases: [Acme]}\n  - {ticker: BRK.B}\n",
)
TAXONOMY_SEEDS = (
    (DEFAULTS / "topics.yaml").read_bytes(),
    b"- name: earnings\n  description: Quarterly results.\n"
    b"- name: markets\n  examples: [stocks rally, futures slide]\n",
    b"topics:\n  - {name: earnings, examples: [profit beats]}\n",
)
NUMERIC = {"0": "negative", "1": "neutral", "2": "positive"}

# -- hostile YAML that no mutation stumbles on by chance --------------------------------

LAUGHS = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
)
MERGES = "m0: &m0 {ticker: ACME, name: x, description: y}\n" + "".join(
    f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}\n" for i in range(1, 10)
)


def hostile_yaml(key: str) -> list[bytes]:
    docs = [
        LAUGHS + f"{key}: *l9\n",
        MERGES + f"{key}: [*m9]\n",
        f"{key}: [{{ticker: &t ACME, name: *t, description: *t}}]\n",
        "- !!python/object/apply:os.system ['echo pwned']\n",
        "- {ticker: !!python/name:os.system , name: !!binary aGk=}\n",
        "- {ticker: !!timestamp x, name: !!bool x, description: !!float ''}\n",
        "- {ticker: !!int '', name: !!omap [a], description: !!set {a}}\n",
        "- {ticker: 2001-13-45, name: 0b_, description: 0x_}\n",
        "- {ticker: 2001-01-01 00:00:00 +99:00, name: x, description: y}\n",
        "- {ticker: " + "9" * 5000 + ", name: x, description: y}\n",
        f"{key}: " + "[" * 5000,
        f"{key}:\n" + "- " * 3000 + "x\n",
        "- {? [a, b] : c, ticker: ACME}\n",
        "- {1: 2, null: 3, ticker: ACME, name: x, description: y}\n",
        "- {ticker: ACME, ticker: GLBX, name: a, name: b, description: c}\n",
        "--- [{ticker: A}]\n--- [{ticker: B}]\n",
        "%YAML 1.1\n%TAG ! tag:evil.example,2000:\n--- [!thing {ticker: A}]\n",
        '- {ticker: "\\ud800", name: "\\udc00\\ud83d", description: "\\U0010FFFF"}\n',
        '- {ticker: "A\\0B", name: "\\L\\P\\N", description: "\\_\\e"}\n',
        "\ufeff\ufeff- {ticker: ACME}\n",
        "",
        f"{key}:\n",
        f"{key}: {{}}\n",
    ]
    return [d.encode("utf-8", "surrogatepass") for d in docs]


# -- strategies -------------------------------------------------------------------------


def _apply(data: bytes, op: tuple) -> bytes:
    kind, *args = op
    n = len(data)
    if kind == "insert":
        at = args[0] % (n + 1)
        return data[:at] + args[1] + data[at:]
    if kind == "delete" and n:
        at = args[0] % n
        return data[:at] + data[at + args[1] :]
    if kind == "flip" and n:
        at = args[0] % n
        return data[:at] + bytes([data[at] ^ (1 << args[1])]) + data[at + 1 :]
    if kind == "truncate":
        return data[: args[0] % (n + 1)]
    if kind == "endings":
        return data.replace(b"\r\n", b"\n").replace(b"\n", args[0])
    if kind == "prefix":
        return args[0] + data
    if kind == "repeat" and n:
        at = args[0] % n
        chunk = data[at : at + args[1]]
        return data[:at] + chunk * args[2] + data[at:]
    return data


_positions = st.integers(0, 10**6)
_ops = st.one_of(
    st.tuples(st.just("insert"), _positions, st.sampled_from(HOSTILE_TOKENS)),
    st.tuples(st.just("insert"), _positions, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _positions, st.integers(1, 40)),
    st.tuples(st.just("flip"), _positions, st.integers(0, 7)),
    st.tuples(st.just("truncate"), _positions),
    st.tuples(st.just("endings"), st.sampled_from([b"\r\n", b"\r", b"\n", b"\n\r"])),
    st.tuples(
        st.just("prefix"), st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00"])
    ),
    st.tuples(st.just("repeat"), _positions, st.integers(1, 64), st.integers(2, 200)),
)


def mutated(seeds: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(st.sampled_from(seeds))
        for op in draw(st.lists(_ops, min_size=1, max_size=4)):
            data = _apply(data, op)
        return data

    return build()


# Text with the awkward characters: controls, line separators, BOMs, surrogates.
_chars = st.one_of(
    st.characters(),
    st.sampled_from(list("\x00\r\n\t,;|\"'\\$&*!?#[]{}:-\u2028\u0085\ufeff\ud800\udfff")),
)
_text = st.text(_chars, max_size=30)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),
    _text,
    st.sampled_from(LABELS + ("Bullish", "bear", "NEU", "0", "1", "2", "meh", "")),
)
_json = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3)
)


def _records(keys: tuple[str, ...]) -> st.SearchStrategy[list[dict]]:
    key = st.one_of(st.sampled_from(keys), _text)
    return st.lists(st.dictionaries(key, _json, max_size=5), max_size=6)


def json_files(keys: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        records: list[Any] = draw(_records(keys))
        if draw(st.booleans()):
            records.append(draw(_json))
        ascii_only = draw(st.booleans())
        if draw(st.booleans()):
            text = json.dumps(records, ensure_ascii=ascii_only)
        else:
            text = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records)
        return text.encode("utf-8", "surrogatepass")

    return build()


def csv_files(keys: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        header = draw(st.lists(st.one_of(st.sampled_from(keys), _text), min_size=1, max_size=4))
        rows = draw(st.lists(st.lists(st.one_of(_text, st.sampled_from(LABELS)), max_size=5)))
        out = io.StringIO()
        writer = csv.writer(
            out,
            delimiter=draw(st.sampled_from(",;\t|")),
            quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
            lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])),
        )
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue().encode("utf-8", draw(st.sampled_from(["surrogatepass", "replace"])))

    return build()


def yaml_files(key: str, keys: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        records = draw(_records(keys))
        data = {key: records} if draw(st.booleans()) else records
        try:
            text = yaml.safe_dump(
                data,
                default_flow_style=draw(st.sampled_from([None, True, False])),
                allow_unicode=draw(st.booleans()),
            )
        except yaml.YAMLError:  # a float key PyYAML cannot write
            text = ""
        return text.encode("utf-8", "surrogatepass")

    return build()


def files(seeds: tuple[bytes, ...], generated: st.SearchStrategy[bytes]) -> st.SearchStrategy:
    return st.one_of(st.binary(max_size=600), mutated(seeds), generated, mutated_of(generated))


def mutated_of(generated: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(generated)
        for op in draw(st.lists(_ops, min_size=1, max_size=2)):
            data = _apply(data, op)
        return data

    return build()


# -- the checks -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cases")


def load_or_refuse(
    load: Callable[[Path], Any], path: Path, data: bytes, clean: type[Exception]
) -> Any:
    """``load(path)`` on ``data``; ``None`` when refused with a proper message.

    Any exception but ``clean`` propagates and fails the test, with the input shrunk.
    """
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    try:
        return load(path)
    except clean as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert str(path) in message, message
        assert len(message) <= 1000, message
        message.encode("utf-8")  # printable on any terminal and in any log
        return None


def assert_storable(text: str) -> None:
    text.encode("utf-8")


def check_labelled(items: list | None) -> None:
    for item in items or []:
        assert isinstance(item.text, str) and item.text.strip(), item
        assert_storable(item.text)
        assert item.label in LABELS, item


def check_records(rows: list | None) -> None:
    for row in rows or []:
        assert isinstance(row, dict) and row
        for key in row:
            assert isinstance(key, str)
            assert_storable(key)
        assert any(isinstance(v, str) and v.strip() for v in row.values()), row


def check_watchlist(watch: WatchList | None) -> None:
    if watch is None:
        return
    tagger = EntityTagger(watch)
    assert len(watch) == len(watch.tickers()) > 0
    for ticker in watch.tickers():
        assert isinstance(ticker, str) and ticker, ticker
        assert canonical_ticker(ticker) == ticker, ticker
        assert ticker.isprintable() and not any(c.isspace() for c in ticker), ticker
        assert len(ticker) <= 32 and ticker in watch
        name = watch.name(ticker)
        assert isinstance(name, str) and name.strip() and len(name) <= 200, name
        assert_storable(name)
        tagger.tag(f"{name} rallies; ${ticker} {ticker}")


def check_taxonomy(taxonomy: Taxonomy | None) -> None:
    if taxonomy is None:
        return
    names = taxonomy.names()
    assert names and len(set(names)) == len(names) and OTHER not in names, names
    for topic in taxonomy.topics:
        assert topic.name and topic.name == topic.name.strip() and len(topic.name) <= 100
        assert topic.description or topic.examples, topic
        for text in (topic.name, topic.description, *topic.examples):
            assert isinstance(text, str)
            assert_storable(text)
        assert all(e.strip() for e in topic.examples), topic
    TopicModel(taxonomy, toy_embed).assign(toy_embed(["stocks rally"]))


# -- one property per loader ------------------------------------------------------------

LABELLED_KEYS = ("text", "label", "sentiment", "headline", "tweet", "class", "id")
WATCH_KEYS = ("ticker", "name", "aliases", "entities")
TOPIC_KEYS = ("name", "description", "examples", "topics")


@CASES
@given(files(CSV_SEEDS, csv_files(LABELLED_KEYS)))
@example(b"text,label\rup,pos\rdown,neg\r")
@example(b"te\x00xt,label\na\x00,pos\n")
@example(b'text,label\na,"line one\nline two"\n')
@example(b",".join(b"c%d" % i for i in range(3000)) + b"\n")
@example(b"text,label\n" + b"x" * 200_000 + b",pos\n")
@example(b"text,label\n")
@example(b"")
def test_csv_files(case_dir: Path, data: bytes) -> None:
    path = case_dir / "case.csv"
    check_labelled(
        load_or_refuse(lambda p: load_labelled(p, label_map=NUMERIC), path, data, DataError)
    )
    check_records(load_or_refuse(read_records, path, data, DataError))


@CASES
@given(files(JSONL_SEEDS, json_files(LABELLED_KEYS)))
@example(b"[" * 5000)
@example(b'{"text": ' + b"[" * 5000 + b"\n")
@example(b'{"text": "a", "label": ' + b"9" * 5000 + b"}\n")
@example(b'{"text": 1e999, "label": -1e999}\n{"text": NaN, "label": Infinity}\n')
@example(b'{"text": "\\ud800", "label": "\\udc00", "\\ud83d": 1}\n')
@example(b'{"text": ["a"], "label": "pos"}\n{"text": {"a": 1}, "label": "neg"}\n')
@example(b'{"text": "a", "text": "b", "label": "pos", "label": 7}\n')
@example('{"text": "a\u2028b\u0085c", "label": "pos"}\n'.encode())
@example(b'\xef\xbb\xbf\xef\xbb\xbf{"text": "a", "label": "pos"}\n')
def test_jsonl_files(case_dir: Path, data: bytes) -> None:
    path = case_dir / "case.jsonl"
    check_labelled(
        load_or_refuse(lambda p: load_labelled(p, label_map=NUMERIC), path, data, DataError)
    )
    check_records(load_or_refuse(read_records, path, data, DataError))


@CASES
@given(files(JSONL_SEEDS, json_files(LABELLED_KEYS)))
def test_json_array_files(case_dir: Path, data: bytes) -> None:
    check_labelled(load_or_refuse(load_labelled, case_dir / "case.json", data, DataError))


@CASES
@given(
    st.one_of(
        files(WATCH_YAML_SEEDS, yaml_files("entities", WATCH_KEYS)),
        st.sampled_from(hostile_yaml("entities")),
    )
)
def test_watchlist_yaml_files(case_dir: Path, data: bytes) -> None:
    check_watchlist(load_or_refuse(WatchList.load, case_dir / "case.yaml", data, ConfigFileError))


@CASES
@given(files(WATCH_CSV_SEEDS, csv_files(WATCH_KEYS)))
@example(b"ticker,name\n$ $acme,\xe2\x80\xa8\n")
@example(b"\xef\xbb\xbfticker\r\n\xef\xbb\xbf\r\n")
@example(b"ticker,aliases\nACME," + b"a|" * 5000 + b"\n")
@example(b"ticker,aliases\nACME," + b"a " * 5000 + b"\n")
def test_watchlist_csv_files(case_dir: Path, data: bytes) -> None:
    check_watchlist(load_or_refuse(WatchList.load, case_dir / "case.csv", data, ConfigFileError))


@CASES
@given(
    st.one_of(
        files(TAXONOMY_SEEDS, yaml_files("topics", TOPIC_KEYS)),
        st.sampled_from(hostile_yaml("topics")),
    )
)
def test_taxonomy_files(case_dir: Path, data: bytes) -> None:
    check_taxonomy(load_or_refuse(Taxonomy.load, case_dir / "case.yaml", data, ConfigFileError))


@CASES
@given(
    st.one_of(
        st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
        mutated(LABEL_MAP_SEEDS).map(lambda b: b.decode("utf-8", "surrogateescape")),
        st.lists(
            st.tuples(_text, st.sampled_from(["=", "", "=="]), st.sampled_from(LABELS + ("x",)))
        ).map(lambda parts: ",".join(f"{r}{s}{t}" for r, s, t in parts)),
    )
)
@example("caf\udce9=negative")
@example("0=negative,\ud800=positive")
def test_label_map_option(spec: str) -> None:
    try:
        mapping = parse_label_map(spec)
    except DataError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= 1000
        str(exc).encode("utf-8")
        return
    for raw, label in (mapping or {}).items():
        assert raw and raw == raw.strip(), raw
        assert_storable(raw)
        assert label in LABELS
