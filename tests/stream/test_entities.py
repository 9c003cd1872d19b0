"""Entity tagging: cashtags, the feed's entities and a watch list merge into canonical tickers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from stream import entities, errors
from stream.entities import EntityTagger, WatchList, canonical_ticker, normalise
from stream.errors import ConfigFileError
from stream.synthetic import COMPANIES

WATCH = WatchList.from_records(
    [
        {"ticker": "ACME", "name": "Acme Corp", "aliases": ["Acme"]},
        {"ticker": "UMBR", "name": "Umbrella Holdings", "aliases": ["Umbrella"]},
        {"ticker": "BRK.B", "name": "Berkshire Hathaway", "aliases": ["Berkshire"]},
        {"ticker": "IT", "name": "Gartner"},
        {"ticker": "A", "name": "Agilent Technologies"},
        {"ticker": "JNJ", "name": "Johnson & Johnson"},
    ]
)
CASHTAGS = EntityTagger()


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("$ACME beats estimates", ["ACME"]),
        ("buy $brk.b and $GLBX.", ["BRK.B", "GLBX"]),
        ("$BRK.A vs $BRK.B: which class?", ["BRK.A", "BRK.B"]),
        ("($TSLA) up, $nvda down;$AMD flat", ["AMD", "NVDA", "TSLA"]),
        ("$ACME $ACME $acme", ["ACME"]),
        ("a $5 stock", []),
        ("raised $5.2bn in debt, $120M more", []),
        ("costs US$5 or US$ACME", []),
        ("email me at x$ACME", []),
        ("$TOOLONGX is not a tag, $ACME9 neither", []),
        ("no tags here", []),
    ],
)
def test_cashtags(text: str, tags: list[str]) -> None:
    assert CASHTAGS.tag(text) == tags


def test_given_entities_are_canonicalised_and_merged() -> None:
    assert CASHTAGS.tag("$GLBX rallies", given=[" $acme", "brk.b", "", "  ", "$", "GLBX"]) == [
        "ACME",
        "BRK.B",
        "GLBX",
    ]
    assert canonical_ticker(" $$brk.b ") == "BRK.B"


@pytest.mark.parametrize(
    "text",
    [
        "Acme Corp beats estimates",
        "ACME CORP. beats estimates",
        "acme-corp beats estimates",
        "shares of acme corp, the anvil maker",
        "Acme's quarter",  # possessive leaves the token "acme" whole
        "(Acme) profit climbs",
        "profit at acme\n",
    ],
)
def test_names_and_aliases_match_tolerant_of_case_and_punctuation(text: str) -> None:
    assert EntityTagger(WATCH).tag(text) == ["ACME"]


@pytest.mark.parametrize(
    "text",
    [
        "Acmeville council meets",
        "the acmecorp brand",
        "Umbrellas sold out in the rain",
        "Berkshires are lovely in autumn",
    ],
)
def test_names_match_whole_tokens_only(text: str) -> None:
    assert EntityTagger(WATCH).tag(text) == []


def test_multi_token_names_and_punctuated_names() -> None:
    tagger = EntityTagger(WATCH)
    assert tagger.tag("Umbrella Holdings and Berkshire Hathaway") == ["BRK.B", "UMBR"]
    assert tagger.tag("JOHNSON & JOHNSON recalls talc") == ["JNJ"]
    assert tagger.tag("Johnson and Johnson") == []  # "&" is punctuation, "and" is a word


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("ACME shares fall", ["ACME"]),
        ("UMBR, ACME: both down", ["ACME", "UMBR"]),
        ("BRK.B hits a record", ["BRK.B"]),
        ("umbr is lower case, so not a ticker", []),
        ("Umbr is not upper case either", []),
        ("IT spending slows at A large firm", []),  # tickers under 3 letters never match bare
        ("ACMEX is another symbol", []),
    ],
)
def test_bare_tickers_need_upper_case_and_three_letters(text: str, tags: list[str]) -> None:
    assert EntityTagger(WATCH).tag(text) == tags


def test_all_sources_merge_sorted_and_deduplicated() -> None:
    tags = EntityTagger(WATCH).tag(
        "Umbrella and $ACME and ACME and Acme Corp; $GLBX", given=["acme", "INIT"]
    )
    assert tags == ["ACME", "GLBX", "INIT", "UMBR"]


def test_only_watched_drops_unwatched_cashtags_and_given() -> None:
    tagger = EntityTagger(WATCH, only_watched=True)
    assert tagger.tag("$GLBX and $acme, Umbrella", given=["INIT", "brk.b"]) == [
        "ACME",
        "BRK.B",
        "UMBR",
    ]
    with pytest.raises(ValueError, match="watch list"):
        EntityTagger(None, only_watched=True)


def test_tag_many() -> None:
    tagger = EntityTagger(WATCH)
    assert tagger.tag_many(["Acme up", "$X", "nothing"]) == [["ACME"], ["X"], []]
    assert tagger.tag_many(["Acme up", "nothing"], [["INIT"], []]) == [["ACME", "INIT"], []]
    with pytest.raises(ValueError, match="2 texts but 1"):
        tagger.tag_many(["a", "b"], [["X"]])


def test_normalise() -> None:
    assert normalise("ACME—Corp.,  Inc!") == "acme corp inc"
    assert normalise("Straße") == "strasse"
    assert normalise("snake_case") == "snake case"


def test_yaml_list_and_mapping_and_csv_load_alike(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text(
        "- ticker: ACME\n  name: Acme Corp\n  aliases: [Acme]\n- ticker: $glbx\n  name: Globex\n"
    )
    mapped = tmp_path / "map.yml"
    mapped.write_text(
        "entities:\n  - {ticker: ACME, name: Acme Corp, aliases: [Acme]}\n"
        "  - {ticker: GLBX, name: Globex}\n"
    )
    table = tmp_path / "list.csv"
    table.write_text("ticker,name,aliases\nACME,Acme Corp,Acme|Acme Inc\nGLBX,Globex,\n\n")
    for path in (listed, mapped, table):
        watch = WatchList.load(path)
        assert watch.tickers() == ["ACME", "GLBX"], path
        assert watch.name("acme") == "Acme Corp"
        assert len(watch) == 2
        assert "$glbx" in watch and "INIT" not in watch
        assert EntityTagger(watch).tag("acme and globex") == ["ACME", "GLBX"]
    assert EntityTagger(WatchList.load(table)).tag("ACME INC.") == ["ACME"]


def test_name_defaults_to_ticker(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("ticker\nHOOL\n")
    assert WatchList.load(path).name("HOOL") == "HOOL"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("w.yaml", "- {name: Acme Corp}\n", r"w\.yaml: entry 1: missing ticker"),
        ("w.yaml", "- {ticker: ACME}\n- {ticker: ' $ '}\n", r"w\.yaml: entry 2: missing ticker"),
        ("w.yaml", "- {ticker: ACME}\n- {ticker: acme}\n", r"entry 2: duplicate ticker 'ACME'"),
        ("w.yaml", "- {ticker: ACME, aliases: 3}\n", r"entry 1: aliases must be a list"),
        ("w.yaml", "- {ticker: 7}\n", r"entry 1: ticker must be a string"),
        ("w.yaml", "- {ticker: AC ME}\n", r"entry 1: ticker 'AC ME' contains whitespace"),
        ("w.yaml", "- ACME\n", r"entry 1: expected a mapping"),
        ("w.yaml", "tickers: []\n", r"mapping with key 'entities'"),
        ("w.yaml", "", r"w\.yaml: expected a list of entries, got NoneType"),
        ("w.yaml", "[]\n", r"w\.yaml: no entries"),
        ("w.yaml", "- {ticker: [unclosed\n", r"w\.yaml: invalid YAML"),
        ("w.csv", "ticker,name\nACME,Acme\n,Nameless\n", r"w\.csv: line 3: missing ticker"),
        ("w.csv", "ticker,name\nACME,Acme\nacme,Again\n", r"line 3: duplicate ticker 'ACME'"),
        ("w.csv", "symbol,name\nACME,Acme\n", r"w\.csv: line 1: header must have a 'ticker'"),
        ("w.csv", "ticker,name\n", r"w\.csv: no entries"),
        ("w.json", "[]", r"w\.json: unknown watch-list format '\.json'"),
    ],
)
def test_bad_files_name_the_file_and_entry(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigFileError, match=message):
        WatchList.load(path)


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with libyaml and with PyYAML's own parser, the fallback where libyaml is missing."""
    if request.param == "pure-python":
        monkeypatch.setattr(errors, "_SAFE_LOADER", yaml.SafeLoader)
    return request.param


# Each case is a crash (or a malformed list) the loader fuzzing found before the fix.
_BILLION_LAUGHS = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
)
_MERGE_BOMB = "m0: &m0 {ticker: ACME, name: x}\n" + "".join(
    f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}\n" for i in range(1, 10)
)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # PyYAML's constructors raise AttributeError, KeyError, IndexError on these tags.
        ("w.yaml", b"- {ticker: !!timestamp x}\n", r"line 1, column 12: YAML tag '!!timestamp'"),
        ("w.yaml", b"- {ticker: ACME, name: !!bool x}\n", r"YAML tag '!!bool' is not allowed"),
        ("w.yaml", b"- {ticker: ACME, name: !!float ''}\n", r"YAML tag '!!float'"),
        ("w.yaml", b"- !!python/object/apply:os.system [x]\n", r"'!!python/object/apply"),
        # ...and plain ValueError on values the resolver takes for dates or numbers.
        ("w.yaml", b"- {ticker: 2001-13-45}\n", r"w\.yaml: invalid YAML value: month"),
        ("w.yaml", b"- {ticker: 0b_}\n", r"w\.yaml: invalid YAML value"),
        ("w.yaml", b"- {ticker: " + b"9" * 5000 + b"}\n", r"invalid YAML value: Exceeds"),
        # RecursionError in the composer.
        ("w.yaml", b"entities: " + b"[" * 5000, r"w\.yaml: .*(nesting depth|nested deeper)"),
        ("w.yaml", b"entities:\n" + b"- " * 2000 + b"x\n", r"nested deeper than 32 levels"),
        # Alias bombs: refused before anything is built.
        ("w.yaml", (_BILLION_LAUGHS + "entities: *l9\n").encode(), r"line 2, .*aliases \(\*l0\)"),
        ("w.yaml", (_MERGE_BOMB + "entities: [*m9]\n").encode(), r"aliases \(\*m0\)"),
        # UnicodeDecodeError, which named no file.
        ("w.yaml", b"- {ticker: ACME, name: Caf\xe9}\n", r"w\.yaml: not UTF-8 text \(byte 26\)"),
        ("w.csv", b"ticker,name\nACME,Caf\xe9\n", r"w\.csv: not UTF-8 text"),
        # PyYAML's multi-line messages quoting the file; now one line with the position.
        (
            "w.yaml",
            b"- ticker: ACME\n  name: Acme\n $glbx\n",
            r"invalid YAML at line 3, column 2: ",
        ),
        # Tickers that were accepted but could never be matched or shown.
        ("w.yaml", b'- {ticker: "\\ufeff"}\n', r"ticker '\\ufeff' is not a ticker"),
        ("w.csv", b"ticker\nA\x00B\n", r"w\.csv: line 2: ticker 'A\\x00B' is not a ticker"),
        ("w.csv", b"ticker\n" + b"X" * 40 + b"\n", r"is not a ticker \(at most 32"),
        # Half a surrogate pair, which no page, store or log can encode.
        (
            "w.yaml",
            b'- {ticker: ACME, name: "\\udc00"}\n',
            r"surrogate pair|invalid Unicode character escape",
        ),
        # A long phrase is kept as one prefix per word: quadratic memory.
        (
            "w.yaml",
            b"- {ticker: ACME, aliases: [" + b"a " * 20 + b"]}\n",
            r"alias 'a a a.*16 words",
        ),
        ("w.csv", b"ticker,name\nACME," + b"x" * 201 + b"\n", r"line 2: name 'xxx.*200 char"),
    ],
)
def test_hostile_files_are_refused_in_one_line(
    tmp_path: Path, yaml_parser: str, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigFileError, match=message) as caught:
        WatchList.load(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)
    assert len(str(caught.value)) < 300


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(_MERGE_BOMB + "entities: [*m9]\n")  # 9**9 merged keys if expanded
    started = time.perf_counter()
    with pytest.raises(ConfigFileError, match="aliases"):
        WatchList.load(path)
    assert time.perf_counter() - started < 1.0


def test_size_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.csv"
    path.write_text("ticker\nAAA\nBBB\nCCC\n")
    monkeypatch.setattr(entities, "MAX_ENTRIES", 2)
    with pytest.raises(ConfigFileError, match=r"w\.csv: line 4: more than 2 entries"):
        WatchList.load(path)
    monkeypatch.setattr(entities, "MAX_FILE_BYTES", 10)
    with pytest.raises(ConfigFileError, match=r"w\.csv: larger than 0 KiB; a watch list this big"):
        WatchList.load(path)


def test_yaml_of_many_tiny_values_is_refused_before_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under the size limit, yet PyYAML's nodes for it took 750 MB and 30 s.
    path = tmp_path / "w.yaml"
    path.write_text("entities: [" + "a," * (2 * 1024 * 1024 - 10) + "a]\n")
    started = time.perf_counter()
    with pytest.raises(ConfigFileError, match=r"w\.yaml: line 1, .*more than 100,000 YAML values"):
        WatchList.load(path)
    assert time.perf_counter() - started < 5.0
    monkeypatch.setattr(errors, "MAX_YAML_NODES", 6)
    path.write_text("- {ticker: A}\n- {ticker: B}\n")  # 7 nodes: the list, 2 maps, 4 scalars
    with pytest.raises(ConfigFileError, match="more than 6 YAML values"):
        WatchList.load(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"missing\.yaml: no such file"):
        WatchList.load(tmp_path / "missing.yaml")
    assert issubclass(ConfigFileError, ValueError)


def test_awkward_but_valid_files_load(tmp_path: Path) -> None:
    bom = tmp_path / "bom.csv"  # Excel writes a byte-order mark; the header is still "ticker"
    bom.write_bytes(b"\xef\xbb\xbfticker,name\r\nACME,Acme Corp\r\n")
    assert WatchList.load(bom).name("ACME") == "Acme Corp"
    blank_name = tmp_path / "blank.csv"  # U+2028 strips to nothing: the name is the ticker
    blank_name.write_text("ticker,name\n$ $acme,\u2028\n", encoding="utf-8")
    watch = WatchList.load(blank_name)
    assert watch.tickers() == ["ACME"]  # "$ $acme" gave "$ACME", which "$ACME" in watch missed
    assert watch.name("ACME") == "ACME"
    assert "$acme" in watch
    ampersand = tmp_path / "amp.yaml"  # "&" inside a plain scalar is not an anchor
    ampersand.write_text("- {ticker: T, name: AT&T}\n- {ticker: JNJ, name: '*J&J'}\n")
    assert WatchList.load(ampersand).name("JNJ") == "*J&J"


def test_default_watch_list_has_the_demo_companies_and_large_caps() -> None:
    watch = WatchList.default()
    assert len(watch) >= 50
    for ticker, name in COMPANIES:
        assert ticker in watch
        assert watch.name(ticker) == name
    for ticker in ("AAPL", "MSFT", "AMZN", "TSLA", "NVDA", "GOOGL", "META", "JPM", "BA"):
        assert ticker in watch
    tagger = EntityTagger(watch)
    assert tagger.tag("Umbrella shares slide after Goldman Sachs downgrade") == ["GS", "UMBR"]
    assert tagger.tag("Stark and Wayne team up; Google and Facebook fined") == [
        "GOOGL",
        "META",
        "STRK",
        "WAYN",
    ]
    # Common words must not tag: "target" (Target Corp) and "chase" (JPMorgan) are left out.
    assert tagger.tag("analysts chase the price target higher") == []


def test_default_watch_list_tags_every_demo_headline() -> None:
    from stream.synthetic import labelled_headlines

    tagger = EntityTagger(WatchList.default())
    by_name = {name: ticker for ticker, name in COMPANIES}
    for row in labelled_headlines(200, seed=5):
        tags = tagger.tag(row["text"])
        expected = {t for name, t in by_name.items() if name in row["text"]}
        expected |= {t for t in by_name.values() if f"${t}" in row["text"]}
        assert expected <= set(tags), row["text"]


def test_docstring_examples_run() -> None:
    import doctest

    import stream.entities

    result = doctest.testmod(stream.entities)
    assert result.failed == 0
    assert result.attempted > 0
