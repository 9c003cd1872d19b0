"""Labelled text files: reading CSV/JSONL, label names, and a stratified split.

Everything a user hands to ``bootstrap`` or ``eval`` comes through here, so
every problem becomes a ``DataError`` that names the file, the row and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

TEXT_COLUMNS = ("text", "sentence", "headline", "title", "content", "body", "tweet")
LABEL_COLUMNS = ("label", "sentiment", "labels", "class", "target")
_DELIMITERS = (",", ";", "\t", "|")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_SYNONYMS = {
    "negative": "negative",
    "neg": "negative",
    "bearish": "negative",
    "bear": "negative",
    "neutral": "neutral",
    "neu": "neutral",
    "positive": "positive",
    "pos": "positive",
    "bullish": "positive",
    "bull": "positive",
}
_LABEL_MAP_EXAMPLE = "0=negative,1=positive,2=neutral"
# Rows are flat records; anything nested deeper is not a labelled-data file,
# and the bound keeps every later walk or repr of a value far from recursion limits.
_MAX_JSON_DEPTH = 32
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class DataError(ValueError):
    """A labelled-data file or option is unusable; the message says where and how to fix it."""


@dataclass(frozen=True)
class LabelledText:
    """A text and its sentiment label (one of ``LABELS``)."""

    text: str
    label: str


@dataclass(frozen=True)
class _Row:
    where: str  # "row 12 (line 14)": for error messages
    values: dict


def _canonical(name: str) -> str | None:
    return _SYNONYMS.get(name.strip().lower())


def _shown(value: object, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters: a value in a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(names: list, limit: int = 12) -> str:
    """A list for a message, its tail elided past ``limit`` items."""
    if len(names) <= limit:
        return _shown(names, 400)
    return f"{_shown(names[:limit], 400)[:-1]}, ... ({len(names)} in all)]"


def parse_label_map(spec: str | None) -> dict[str, str] | None:
    """Parse ``"raw=label,..."`` into a mapping onto ``LABELS``; ``None`` or blank gives ``None``.

    >>> parse_label_map("0=negative,1=positive,2=neutral")
    {'0': 'negative', '1': 'positive', '2': 'neutral'}
    >>> parse_label_map("down=Bearish, up=bullish, flat=neutral")
    {'down': 'negative', 'up': 'positive', 'flat': 'neutral'}
    >>> parse_label_map(None) is None
    True
    """
    if spec is None or not spec.strip():
        return None
    if not spec.isascii():
        try:
            spec.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8 in the shell's argument
            raise DataError(
                f"label map {_shown(spec)} is not UTF-8 text; write it like {_LABEL_MAP_EXAMPLE!r}"
            ) from None
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        raw, sep, target = part.partition("=")
        raw, target = raw.strip(), target.strip()
        if not sep or not raw or not target:
            raise DataError(
                f"label map entry {_shown(part.strip())} is not RAW=LABEL; "
                f"write it like {_LABEL_MAP_EXAMPLE!r}"
            )
        label = _canonical(target)
        if label is None:
            raise DataError(
                f"label map entry {_shown(part.strip())} maps to {_shown(target)}, which is "
                f"not one of {', '.join(LABELS)}; write it like {_LABEL_MAP_EXAMPLE!r}"
            )
        if raw in mapping:
            raise DataError(f"label map names {_shown(raw)} twice; give each raw value once")
        mapping[raw] = label
    if not mapping:
        raise DataError(f"label map {_shown(spec)} is empty; write it like {_LABEL_MAP_EXAMPLE!r}")
    return mapping


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # utf-8-sig drops a byte-order mark when there is one.
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8"
        ) from exc


def _scalar(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1.0 from a JSON writer means the label 1
    return value


def _storable(text: str) -> str:
    """``text`` with each unpaired UTF-16 surrogate (a ``"\\ud83d"`` escape cut from its
    pair) replaced by U+FFFD, as the stream's validator repairs them."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _plain(value: object, where: str, depth: int = 1) -> object:
    """A parsed JSON value with its strings made storable; refuses deep nesting."""
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, list | dict):
        if depth > _MAX_JSON_DEPTH:
            raise DataError(f"{where} is nested deeper than {_MAX_JSON_DEPTH} levels")
        if isinstance(value, list):
            return [_plain(v, where, depth + 1) for v in value]
        return {_storable(k): _plain(v, where, depth + 1) for k, v in value.items()}
    return value


def _parse_json(text: str, where: str, hint: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno}, " if "\n" in text else ""
        raise DataError(f"{where} is not valid JSON ({at}{exc.msg}){hint}") from exc
    except RecursionError:
        raise DataError(f"{where} is nested deeper than {_MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise DataError(f"{where} holds a number Python refuses to read ({exc})") from exc


def _jsonl_rows(path: Path, content: str) -> tuple[list[_Row], list[str]]:
    if content.lstrip().startswith("["):  # a .json file holding one array of objects
        items = _parse_json(content, str(path), "")
        if not isinstance(items, list):  # "[1] 2" fails to parse; this cannot happen
            raise DataError(f"{path}: expected one JSON array of objects")
        numbered = [(f"item {i}", item) for i, item in enumerate(items, start=1)]
    else:
        numbered = []
        # JSONL lines end at "\n" (or "\r\n"); other line separators such as
        # U+2028 may sit raw inside a JSON string.
        for lineno, line in enumerate(content.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            hint = "; JSONL needs one JSON object per line"
            numbered.append((f"line {lineno}", _parse_json(line, where, hint)))
    rows, columns = [], {}
    for where, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"{path}: {where} is a JSON {type(item).__name__}, not an object")
        values = {_storable(k): _scalar(_plain(v, f"{path}: {where}")) for k, v in item.items()}
        columns.update(dict.fromkeys(values))
        rows.append(_Row(where, values))
    return rows, list(columns)


def _delimiter(header_line: str) -> str:
    """The candidate delimiter that splits the header into the most fields."""
    best, best_fields = ",", 1
    for delimiter in _DELIMITERS:
        try:
            fields = len(next(csv.reader([header_line], delimiter=delimiter), []))
        except csv.Error:  # a NUL or an overlong field: the real read reports it, with a line
            continue
        if fields > best_fields:
            best, best_fields = delimiter, fields
    return best


def _csv_rows(path: Path, content: str) -> tuple[list[_Row], list[str]]:
    header_line = _LINE_BREAK.split(content, maxsplit=1)[0]
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=_delimiter(header_line))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; it needs a header row")
        columns = [name.strip() for name in header]
        rows = []
        for number, record in enumerate(reader, start=1):
            if not any(field.strip() for field in record):
                continue
            if len(record) > len(columns):
                raise DataError(
                    f"{path}: row {number} (line {reader.line_num}) has {len(record)} fields "
                    f"but the header has {len(columns)}; quote fields that contain the "
                    "delimiter"
                )
            values = dict(zip(columns, record, strict=False))
            values.update(dict.fromkeys(columns[len(record) :], ""))
            rows.append(_Row(f"row {number} (line {reader.line_num})", values))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from exc
    return rows, columns


def _pick_column(
    path: Path, columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str
) -> str:
    if wanted is not None:
        if wanted in columns:
            return wanted
        by_lower = {c.lower(): c for c in columns}
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        raise DataError(
            f"{path}: no {what} column {_shown(wanted)}; the columns are {_listing(columns)}"
        )
    by_lower = {c.lower(): c for c in columns}
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    raise DataError(
        f"{path}: cannot tell which column holds the {what} (looked for "
        f"{', '.join(candidates)}); the columns are {_listing(columns)}; name it with "
        f"--{what}-col"
    )


def _read_rows(path: str | Path, text_col: str | None) -> tuple[Path, list[_Row], list[str], str]:
    path = Path(path)
    content = _read_text(path)
    if path.suffix.lower() in _JSONL_SUFFIXES:
        rows, columns = _jsonl_rows(path, content)
    else:
        rows, columns = _csv_rows(path, content)
    column = _pick_column(path, columns, text_col, TEXT_COLUMNS, "text")
    kept = []
    for row in rows:
        text = row.values.get(column, "")
        if isinstance(text, list | dict):
            kind = "array" if isinstance(text, list) else "object"
            raise DataError(
                f"{path}: {row.where}: the text in column {column!r} is a JSON {kind}, not a string"
            )
        text = text if isinstance(text, str) else str(text)
        if text.strip():
            kept.append(_Row(row.where, {**row.values, column: text}))
    return path, kept, columns, column


def read_records(path: str | Path, *, text_col: str | None = None) -> list[dict]:
    """Rows of a CSV (``,`` ``;`` tab ``|``) or JSONL file as dicts; rows with empty text dropped.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "feed.csv"
    >>> _ = p.write_text('id;Headline\\n1;"Profits rose;\\nagain"\\n2;\\n', encoding="utf-8")
    >>> read_records(p)
    [{'id': '1', 'Headline': 'Profits rose;\\nagain'}]
    """
    _, rows, _, _ = _read_rows(path, text_col)
    return [row.values for row in rows]


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def load_labelled(
    path: str | Path,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    label_map: dict[str, str] | None = None,
) -> list[LabelledText]:
    """Labelled texts from a CSV/JSONL file; rows with an empty label are skipped.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
    >>> _ = p.write_text('{"text": "Shares jump", "sentiment": "Bullish"}\\n'
    ...                  '{"text": "No label yet", "sentiment": ""}\\n', encoding="utf-8")
    >>> load_labelled(p)
    [LabelledText(text='Shares jump', label='positive')]
    >>> load_labelled(p, label_map={"Bullish": "neutral"})[0].label
    'neutral'
    """
    path, rows, columns, text_column = _read_rows(path, text_col)
    label_column = _pick_column(path, columns, label_col, LABEL_COLUMNS, "label")
    raw = [(row, str(row.values.get(label_column, "")).strip()) for row in rows]
    raw = [(row, value) for row, value in raw if value]
    if not raw:
        raise DataError(f"{path}: no row has a label in column {label_column!r}")
    mapping = {k.strip(): v for k, v in (label_map or {}).items()}
    mapping_lower = {k.lower(): v for k, v in mapping.items()}

    distinct = sorted({value for _, value in raw})
    if not mapping and all(_is_number(value) for value in distinct):
        raise DataError(
            f"{path}: column {label_column!r} holds numeric labels {_listing(distinct)}; say "
            "what they "
            f"mean with --label-map, e.g. --label-map {_LABEL_MAP_EXAMPLE!r}"
        )
    items = []
    for row, value in raw:
        label = mapping.get(value) or mapping_lower.get(value.lower()) or _canonical(value)
        if label is None:
            known = f"the label map's {_listing(sorted(mapping))} or " if mapping else ""
            raise DataError(
                f"{path}: {row.where}: unknown label {_shown(value)} in column "
                f"{label_column!r}; expected {known}one of {', '.join(LABELS)} (or "
                "bearish/bullish, neg/neu/pos); map other names with --label-map, e.g. "
                f"{_shown(value + '=negative')}"
            )
        items.append(LabelledText(row.values[text_column], label))
    return items


def stratified_split(
    items: list[LabelledText], test_fraction: float, seed: int
) -> tuple[list[LabelledText], list[LabelledText]]:
    """Split into (train, test) keeping label proportions; deterministic for a seed.

    Each label with at least two items puts at least one in test and one in train; a
    label's test share is ``round(n * test_fraction)`` within those bounds. Not
    scikit-learn's ``train_test_split(stratify=...)``: it refuses a label with a single
    item, and it sizes the test set as a whole, so a label of two items can get none.

    >>> data = [LabelledText(f"t{i}", LABELS[i % 3]) for i in range(30)]
    >>> train, test = stratified_split(data, 0.2, seed=0)
    >>> len(train), len(test), sorted({x.label for x in test}) == sorted(LABELS)
    (24, 6, True)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_label[item.label].append(i)
    rng = random.Random(seed)
    test_index: set[int] = set()
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        n_test = round(len(indices) * test_fraction)
        if len(indices) >= 2:
            n_test = min(max(n_test, 1), len(indices) - 1)
        test_index.update(indices[:n_test])
    train = [x for i, x in enumerate(items) if i not in test_index]
    test = [x for i, x in enumerate(items) if i in test_index]
    return train, test
