"""Reading labelled files: formats, column and label detection, errors, splitting."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from learner.data import (
    LABELS,
    DataError,
    LabelledText,
    load_labelled,
    parse_label_map,
    read_records,
    stratified_split,
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiters_are_detected(tmp_path: Path, delimiter: str) -> None:
    d = delimiter
    path = write(
        tmp_path,
        "f.csv",
        f'id{d}text{d}sentiment\r\n1{d}"Rates {d} yields rise"{d}positive\r\n'
        f"2{d}Stocks slump{d}Negative\r\n",
    )
    assert read_records(path) == [
        {"id": "1", "text": f"Rates {d} yields rise", "sentiment": "positive"},
        {"id": "2", "text": "Stocks slump", "sentiment": "Negative"},
    ]
    assert [x.label for x in load_labelled(path)] == ["positive", "negative"]


def test_bom_crlf_and_quoted_newlines(tmp_path: Path) -> None:
    content = 'text,label\r\n"line one\nline two",bullish\r\n"say ""hi""",bearish\r\n'
    path = write(tmp_path, "f.csv", b"\xef\xbb\xbf" + content.encode())
    items = load_labelled(path)
    assert items == [
        LabelledText("line one\nline two", "positive"),
        LabelledText('say "hi"', "negative"),
    ]


def test_text_column_detection_and_empty_text_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "id,Headline\n1,Fed holds\n2,\n3,   \n4,Oil up\n")
    assert [r["Headline"] for r in read_records(path)] == ["Fed holds", "Oil up"]


def test_explicit_and_unknown_text_column(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "a,b\nx,y\n")
    assert read_records(path, text_col="b") == [{"a": "x", "b": "y"}]
    with pytest.raises(DataError, match=r"cannot tell.*\['a', 'b'\].*--text-col"):
        read_records(path)
    with pytest.raises(DataError, match=r"no text column 'zz'.*\['a', 'b'\]"):
        read_records(path, text_col="zz")


@pytest.mark.parametrize("name", ["f.jsonl", "f.ndjson", "f.json"])
def test_json_lines(tmp_path: Path, name: str) -> None:
    lines = [
        {"tweet": "Guidance raised", "label": 1},
        {"tweet": "", "label": 0},
        {"tweet": "Dividend cut", "label": 0.0},
        {"tweet": "Meeting on Monday", "label": None},
    ]
    path = write(tmp_path, name, "\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = load_labelled(path, label_map={"0": "negative", "1": "positive"})
    assert items == [
        LabelledText("Guidance raised", "positive"),
        LabelledText("Dividend cut", "negative"),
    ]


def test_json_array_file(tmp_path: Path) -> None:
    path = write(tmp_path, "f.json", json.dumps([{"text": "Up", "sentiment": "POS"}]))
    assert load_labelled(path) == [LabelledText("Up", "positive")]


def test_bad_json_line_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", '{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_records(path)


def test_synonyms_and_unlabelled_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.csv",
        "text,sentiment\na,Bullish\nb,neu\nc,\nd,NEGATIVE\ne,bear\n",
    )
    assert [x.label for x in load_labelled(path)] == [
        "positive",
        "neutral",
        "negative",
        "negative",
    ]


def test_numeric_labels_need_a_label_map(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "text,label\na,0\nb,2\nc,1\n")
    with pytest.raises(DataError, match=r"numeric labels \['0', '1', '2'\].*--label-map"):
        load_labelled(path)
    label_map = parse_label_map("0=negative,1=positive,2=neutral")
    assert [x.label for x in load_labelled(path, label_map=label_map)] == [
        "negative",
        "neutral",
        "positive",
    ]


def test_unknown_label_names_value_and_row(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "text,label\na,positive\nb,meh\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\): unknown label 'meh'"):
        load_labelled(path)


def test_label_column_missing_or_explicit(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "text,mood\na,positive\n")
    with pytest.raises(DataError, match="--label-col"):
        load_labelled(path)
    assert load_labelled(path, label_col="mood") == [LabelledText("a", "positive")]


def test_no_labelled_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "text,label\na,\n")
    with pytest.raises(DataError, match="no row has a label"):
        load_labelled(path)


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="not UTF-8"):
        read_records(write(tmp_path, "latin.csv", "text\ncaf\xe9\n".encode("latin-1")))
    with pytest.raises(DataError, match="row 1 .* 3 fields but the header has 2"):
        read_records(write(tmp_path, "ragged.csv", "text,label\na,b,c\n"))
    with pytest.raises(DataError, match="empty"):
        read_records(write(tmp_path, "empty.csv", ""))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # RecursionError from json's decoder, as an array file and as one line.
        ("f.json", b"[" * 5000, r"f\.json is nested deeper than 32 levels"),
        ("f.jsonl", b'{"text": ' + b"[" * 5000 + b"\n", r"f\.jsonl: line 1 is nested deeper"),
        ("f.jsonl", b'{"text": "a", "label": ' + b"[" * 40 + b"]" * 40 + b"}", r"line 1 is nested"),
        # A plain ValueError from int(): more than 4,300 digits.
        ("f.jsonl", b'{"text": "a", "label": ' + b"9" * 5000 + b"}\n", r"line 1 holds a number"),
        # Accepted before as the text "['a']" (and a deep one broke str()).
        ("f.jsonl", b'{"text": ["a"], "label": "pos"}\n', r"line 1: the text .* JSON array"),
        # Messages that ran over many lines or thousands of characters.
        ("f.csv", b'text,label\na,"line one\nline two"\n', r"unknown label 'line one\\nline two'"),
        ("f.csv", b"text,label\na," + b"x" * 5000 + b"\n", r"unknown label 'xxx+\.\.\. in column"),
        (
            "f.csv",
            b",".join(b"c%d" % i for i in range(500)) + b"\n",
            r"'c11', \.\.\. \(500 in all\)",
        ),
    ],
)
def test_hostile_files_are_refused_in_one_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=message) as caught:
        load_labelled(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)
    assert len(str(caught.value)) < 600


def test_half_surrogate_escapes_are_repaired(tmp_path: Path) -> None:
    # A tweet cut inside an emoji: the text loaded, then no tokenizer, store or
    # terminal could encode it (and an unknown label made an unprintable message).
    path = write(
        tmp_path,
        "f.jsonl",
        '{"text": "Up \\ud83d", "label": "pos", "\\udc00": 1}\n'
        '{"text": "Flat \\ud83d\\ude00", "label": "neu"}\n',
    )
    assert load_labelled(path) == [
        LabelledText("Up \ufffd", "positive"),
        LabelledText("Flat \U0001f600", "neutral"),
    ]
    assert read_records(path)[0] == {"text": "Up \ufffd", "label": "pos", "\ufffd": 1}
    bad_label = write(tmp_path, "g.jsonl", '{"text": "a", "label": "\\ud800"}\n')
    with pytest.raises(DataError, match="unknown label") as caught:
        load_labelled(bad_label)
    str(caught.value).encode("utf-8")


def test_awkward_but_valid_files_load(tmp_path: Path) -> None:
    # U+2028 may sit raw in a JSON string; splitlines() cut the line there.
    path = write(
        tmp_path, "f.jsonl", '{"text": "a\u2028b", "label": "pos"}\n{"text": "c", "label": 0}\n'
    )
    assert load_labelled(path, label_map={"0": "negative"}) == [
        LabelledText("a\u2028b", "positive"),
        LabelledText("c", "negative"),
    ]
    old_mac = write(tmp_path, "f.csv", "text;label\rup;pos\rdown;neg\r")  # CR-only lines
    assert [x.label for x in load_labelled(old_mac)] == ["positive", "negative"]
    nul = write(tmp_path, "n.csv", b"text,label\nA\x00B,pos\n")
    assert load_labelled(nul) == [LabelledText("A\x00B", "positive")]


def test_label_map_from_a_non_utf8_argument() -> None:
    # The shell hands undecodable argument bytes over as lone surrogates.
    spec = b"caf\xe9=negative".decode("utf-8", "surrogateescape")
    with pytest.raises(DataError, match=r"label map 'caf\\udce9=negative' is not UTF-8") as caught:
        parse_label_map(spec)
    str(caught.value).encode("utf-8")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0=negative,1", "not RAW=LABEL"),
        ("0=happy", "not one of negative, neutral, positive"),
        ("0=negative,0=positive", "twice"),
        (" , ", None),
    ],
)
def test_parse_label_map_errors(spec: str, message: str | None) -> None:
    if message is None:
        with pytest.raises(DataError, match="empty"):
            parse_label_map(spec)
        return
    with pytest.raises(DataError, match=message):
        parse_label_map(spec)


def test_parse_label_map_errors_stay_one_short_line() -> None:
    # The property tests found a 10,000-character message quoting the whole entry.
    with pytest.raises(
        DataError, match=r"entry '0=9+\.\.\. maps to '9+\.\.\., which is not"
    ) as caught:
        parse_label_map("0=" + "9" * 10_000 + "=negative,1")
    assert len(str(caught.value)) < 300


def test_parse_label_map_blank_is_none() -> None:
    assert parse_label_map("") is None
    assert parse_label_map(None) is None


def test_stratified_split_keeps_proportions_and_is_seeded() -> None:
    counts = {"negative": 150, "neutral": 600, "positive": 250}
    items = [LabelledText(f"{label}{i}", label) for label, n in counts.items() for i in range(n)]
    train, test = stratified_split(items, 0.2, seed=3)
    assert Counter(x.label for x in test) == {"negative": 30, "neutral": 120, "positive": 50}
    assert len(train) + len(test) == len(items)
    assert not {x.text for x in train} & {x.text for x in test}
    assert stratified_split(items, 0.2, seed=3) == (train, test)
    assert stratified_split(items, 0.2, seed=4)[1] != test


def test_stratified_split_small_classes_and_bad_fraction() -> None:
    items = [LabelledText("a", "negative"), LabelledText("b", "negative")] + [
        LabelledText(f"p{i}", "positive") for i in range(40)
    ]
    train, test = stratified_split(items, 0.05, seed=0)
    assert Counter(x.label for x in test) == {"negative": 1, "positive": 2}
    assert Counter(x.label for x in train)["negative"] == 1
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(items, 1.0, seed=0)


def test_labels_are_canonical() -> None:
    assert LABELS == ("negative", "neutral", "positive")


@pytest.mark.parametrize("module", ["learner.data", "learner.metrics", "learner.train"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0
    assert result.attempted > 0
