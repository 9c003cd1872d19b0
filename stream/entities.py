"""Tag each item with the entities (canonical tickers) it is about.

Three sources are merged into one sorted, de-duplicated list of tickers in
upper case without ``$``: cashtags in the text, the feed's own ``entities``
field, and a :class:`WatchList` of companies matched by name, alias or bare
upper-case ticker.

>>> watch = WatchList.from_records([{"ticker": "ACME", "name": "Acme Corp", "aliases": ["Acme"]}])
>>> tagger = EntityTagger(watch)
>>> tagger.tag("acme-corp. beats; $brk.b and $GLBX flat, $5.2bn buyback", given=["$init "])
['ACME', 'BRK.B', 'GLBX', 'INIT']
>>> tagger.tag("Acmeville council meets")
[]
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# A cashtag is "$" plus 1-6 letters and an optional share class (".B"); "$5" and
# "$5.2bn" are money, and "US$ACME" or "$$ACME" are not tags.
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?![\w])")
# A bare ticker counts only when written in upper case and at least 3 letters
# long, so "IT" or "A" in prose never tag Gartner or Agilent.
_BARE_TICKER = re.compile(r"(?<![\w$])([A-Z]{3,6}(?:\.[A-Z]{1,2})?)(?![\w])")
_NON_ALNUM = re.compile(r"[\W_]+")
_DEFAULT_PATH = "defaults/watchlist.yaml"


def normalise(text: str) -> str:
    """Casefold and turn every run of non-alphanumeric characters into one space.

    >>> normalise("  ACME Corp. (the-company)! ")
    'acme corp the company'
    """
    return _NON_ALNUM.sub(" ", text.casefold()).strip()


def canonical_ticker(raw: str) -> str:
    """Upper case, without surrounding blanks or a leading ``$``; ``""`` when nothing is left.

    >>> canonical_ticker(" $brk.b ")
    'BRK.B'
    """
    return raw.strip().lstrip("$").strip().upper()


@dataclass(frozen=True)
class WatchEntry:
    """A watched company: its ticker, display name and other names it goes by."""

    ticker: str
    name: str
    aliases: tuple[str, ...] = ()


class WatchList:
    """Companies to recognise by name, alias or upper-case ticker.

    Names are looked up as token n-grams in one dictionary (with their prefixes,
    so a scan stops early), so tagging costs a few lookups per token whatever
    the size of the list.

    >>> watch = WatchList.from_records([{"ticker": "acme", "name": "Acme Corp"}])
    >>> watch.tickers(), watch.name("ACME"), len(watch)
    (['ACME'], 'Acme Corp', 1)
    """

    def __init__(self, entries: Iterable[WatchEntry]) -> None:
        self._entries: dict[str, WatchEntry] = {}
        # normalised phrase -> tickers; two tickers may share an alias (share classes).
        self._phrases: dict[str, set[str]] = {}
        for entry in entries:
            if entry.ticker in self._entries:
                raise ValueError(f"duplicate ticker {entry.ticker!r}")
            self._entries[entry.ticker] = entry
            for phrase in (entry.name, *entry.aliases):
                key = normalise(phrase)
                if key:
                    self._phrases.setdefault(key, set()).add(entry.ticker)
        # Every leading run of tokens of a phrase, so a scan stops as soon as it can't match.
        self._prefixes = {
            " ".join(tokens[:n])
            for tokens in map(str.split, self._phrases)
            for n in range(1, len(tokens) + 1)
        }
        self._bare = {t for t in self._entries if _BARE_TICKER.fullmatch(t)}

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any]], source: str = "<records>"
    ) -> WatchList:
        """Build from mappings with ``ticker``, optional ``name`` and ``aliases``.

        Errors name ``source`` and the 1-based entry number.
        """
        located = ((f"{source}: entry {i}", r) for i, r in enumerate(records, start=1))
        return cls(_unique_entries(located, source))

    @classmethod
    def load(cls, path: str | Path) -> WatchList:
        """Read a YAML (list, or ``{entities: [...]}``) or CSV (``ticker,name,aliases``) file.

        CSV aliases are separated by ``|``. Errors name the file and the entry
        (YAML) or line (CSV).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return cls.from_records(_yaml_records(path, "entities"), source=str(path))
        if suffix == ".csv":
            return cls(_csv_entries(path))
        raise ValueError(f"{path}: unknown watch-list format {suffix!r} (use .yaml, .yml or .csv)")

    @classmethod
    def default(cls) -> WatchList:
        """The shipped watch list: the demo's companies and large US tickers."""
        with resources.as_file(resources.files("stream").joinpath(_DEFAULT_PATH)) as path:
            return cls.load(path)

    def tickers(self) -> list[str]:
        return sorted(self._entries)

    def name(self, ticker: str) -> str:
        """The display name of a ticker; ``KeyError`` when it is not watched."""
        return self._entries[canonical_ticker(ticker)].name

    def __contains__(self, ticker: object) -> bool:
        return isinstance(ticker, str) and canonical_ticker(ticker) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"WatchList({len(self)} entries)"

    def match(self, text: str) -> set[str]:
        """Tickers whose name or alias occurs in ``text`` on token boundaries, or whose
        ticker is written bare in upper case."""
        found: set[str] = set()
        tokens = normalise(text).split()
        for start in range(len(tokens)):
            gram = ""
            for token in tokens[start:]:
                gram = f"{gram} {token}" if gram else token
                if gram not in self._prefixes:
                    break
                found |= self._phrases.get(gram, set())
        if self._bare:
            found.update(m for m in _BARE_TICKER.findall(text) if m in self._bare)
        return found


class EntityTagger:
    """Merge cashtags, the feed's entities and watch-list matches into sorted tickers.

    With ``only_watched=True`` cashtags and given entities that are not on the
    watch list are dropped.

    >>> watch = WatchList.from_records([{"ticker": "ACME", "name": "Acme Corp"}])
    >>> EntityTagger(watch, only_watched=True).tag("ACME shares fall; $GLBX flat", given=["INIT"])
    ['ACME']
    >>> EntityTagger().tag_many(["$acme up", "no tags"], [["glbx"], []])
    [['ACME', 'GLBX'], []]
    """

    def __init__(self, watchlist: WatchList | None = None, *, only_watched: bool = False) -> None:
        if only_watched and watchlist is None:
            raise ValueError("only_watched=True needs a watch list")
        self.watchlist = watchlist
        self.only_watched = only_watched

    def tag(self, text: str, given: Iterable[str] = ()) -> list[str]:
        found = {t.upper() for t in _CASHTAG.findall(text)}
        found.update(t for t in map(canonical_ticker, given) if t)
        if self.watchlist is not None:
            if self.only_watched:
                found = {t for t in found if t in self.watchlist}
            found |= self.watchlist.match(text)
        return sorted(found)

    def tag_many(
        self, texts: Sequence[str], given_lists: Sequence[Iterable[str]] | None = None
    ) -> list[list[str]]:
        if given_lists is None:
            return [self.tag(text) for text in texts]
        if len(given_lists) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(given_lists)} entity lists")
        return [self.tag(text, given) for text, given in zip(texts, given_lists, strict=True)]

    def __repr__(self) -> str:
        return f"EntityTagger(watchlist={self.watchlist!r}, only_watched={self.only_watched})"


def _entry(record: object, where: str) -> WatchEntry:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(record).__name__}")
    raw = record.get("ticker")
    if raw is None or (isinstance(raw, str) and not canonical_ticker(raw)):
        raise ValueError(f"{where}: missing ticker")
    if not isinstance(raw, str):
        raise ValueError(f"{where}: ticker must be a string, got {raw!r}")
    ticker = canonical_ticker(raw)
    if any(c.isspace() for c in ticker):
        raise ValueError(f"{where}: ticker {raw!r} contains whitespace")
    name = record.get("name")
    if name is None or name == "":
        name = ticker
    if not isinstance(name, str):
        raise ValueError(f"{where}: name must be a string, got {name!r}")
    aliases = record.get("aliases") or []
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"{where}: aliases must be a list of strings, got {aliases!r}")
    return WatchEntry(ticker, name.strip(), tuple(a.strip() for a in aliases if a.strip()))


def _yaml_records(path: Path, key: str) -> list[Any]:
    """The list of records in a YAML file: the top level, or the list under ``key``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    if isinstance(data, Mapping):
        if key not in data:
            raise ValueError(f"{path}: expected a list or a mapping with key {key!r}")
        data = data[key]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of entries, got {type(data).__name__}")
    return data


def _unique_entries(located: Iterable[tuple[str, Any]], source: object) -> list[WatchEntry]:
    """Entries from ``(where, record)`` pairs; a duplicate ticker or none at all is an error."""
    entries: list[WatchEntry] = []
    seen: set[str] = set()
    for where, record in located:
        entry = _entry(record, where)
        if entry.ticker in seen:
            raise ValueError(f"{where}: duplicate ticker {entry.ticker!r}")
        seen.add(entry.ticker)
        entries.append(entry)
    if not entries:
        raise ValueError(f"{source}: no entries")
    return entries


def _csv_entries(path: Path) -> list[WatchEntry]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "ticker" not in [n.strip() for n in reader.fieldnames]:
            raise ValueError(f"{path}: line 1: header must have a 'ticker' column")

        def located() -> Iterator[tuple[str, dict[str, Any]]]:
            for row in reader:
                record = {k.strip(): v for k, v in row.items() if k is not None}
                if not any((v or "").strip() for v in record.values()):
                    continue  # blank line
                record["aliases"] = (record.get("aliases") or "").split("|")
                yield f"{path}: line {reader.line_num}", record

        return _unique_entries(located(), path)
