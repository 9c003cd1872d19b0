"""Entity tagging: cashtags, the feed's entities and a watch list merge into canonical tickers."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.entities import EntityTagger, WatchList, canonical_ticker, normalise
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
    with pytest.raises(ValueError, match=message):
        WatchList.load(path)


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
