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
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from stream.errors import ConfigFileError, load_yaml_list, read_config_text, shown

# A cashtag is "$" plus 1-6 letters and an optional share class (".B"); "$5" and
# "$5.2bn" are money, and "US$ACME" or "$$ACME" are not tags.
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?![\w])")
# A bare ticker counts only when written in upper case and at least 3 letters
# long, so "IT" or "A" in prose never tag Gartner or Agilent.
_BARE_TICKER = re.compile(r"(?<![\w$])([A-Z]{3,6}(?:\.[A-Z]{1,2})?)(?![\w])")
_NON_ALNUM = re.compile(r"[\W_]+")
_TICKER_PREFIX = re.compile(r"^[\s$]+")
_DEFAULT_PATH = "defaults/watchlist.yaml"

# What a watch-list file may make us hold: every name's leading word runs are
# kept as lookup prefixes, so a phrase costs about words x characters.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_ENTRIES = 50_000
MAX_TICKER_CHARS = 32
MAX_PHRASE_CHARS = 200
MAX_PHRASE_WORDS = 16


def normalise(text: str) -> str:
    """Casefold and turn every run of non-alphanumeric characters into one space.

    >>> normalise("  ACME Corp. (the-company)! ")
    'acme corp the company'
    """
    return _NON_ALNUM.sub(" ", text.casefold()).strip()


def canonical_ticker(raw: str) -> str:
    """Upper case, without surrounding blanks or a leading ``$``; ``""`` when nothing is left.

    >>> canonical_ticker(" $brk.b "), canonical_ticker("$ $acme")
    ('BRK.B', 'ACME')
    """
    return _TICKER_PREFIX.sub("", raw).strip().upper()


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

        CSV aliases are separated by ``|``. Every problem is a
        :class:`~stream.errors.ConfigFileError` naming the file and the entry
        (YAML) or line (CSV); files over ``MAX_FILE_BYTES``, lists over
        ``MAX_ENTRIES`` and YAML aliases are refused.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            records = load_yaml_list(path, "entities", "entries", "watch list", MAX_FILE_BYTES)
            return cls.from_records(records, source=str(path))
        if suffix == ".csv":
            return cls(_csv_entries(path))
        raise ConfigFileError(
            f"{path}: unknown watch-list format {suffix!r} (use .yaml, .yml or .csv)"
        )

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


def _phrase(value: object, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigFileError(f"{where}: {what} must be a string, got {shown(value)}")
    value = value.strip()
    if len(value) > MAX_PHRASE_CHARS or len(normalise(value).split()) > MAX_PHRASE_WORDS:
        raise ConfigFileError(
            f"{where}: {what} {shown(value, 30)} is too long; names and aliases are at most "
            f"{MAX_PHRASE_CHARS} characters and {MAX_PHRASE_WORDS} words"
        )
    return value


def _entry(record: object, where: str) -> WatchEntry:
    if not isinstance(record, Mapping):
        raise ConfigFileError(f"{where}: expected a mapping, got {type(record).__name__}")
    raw = record.get("ticker")
    if raw is None or (isinstance(raw, str) and not canonical_ticker(raw)):
        raise ConfigFileError(f"{where}: missing ticker")
    if not isinstance(raw, str):
        raise ConfigFileError(f"{where}: ticker must be a string, got {shown(raw)}")
    ticker = canonical_ticker(raw)
    if any(c.isspace() for c in ticker):
        raise ConfigFileError(f"{where}: ticker {shown(raw)} contains whitespace")
    if not ticker.isprintable() or len(ticker) > MAX_TICKER_CHARS:
        raise ConfigFileError(
            f"{where}: ticker {shown(raw)} is not a ticker (at most {MAX_TICKER_CHARS} "
            "printable characters)"
        )
    name = record.get("name")
    name = _phrase(name, "name", where) if name is not None else ""
    aliases = record.get("aliases") or []
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, list):
        raise ConfigFileError(f"{where}: aliases must be a list of strings, got {shown(aliases)}")
    aliases = [_phrase(a, "alias", where) for a in aliases]
    return WatchEntry(ticker, name or ticker, tuple(a for a in aliases if a))


def _unique_entries(located: Iterable[tuple[str, Any]], source: object) -> list[WatchEntry]:
    """Entries from ``(where, record)`` pairs; a duplicate ticker or none at all is an error."""
    entries: list[WatchEntry] = []
    seen: set[str] = set()
    for where, record in located:
        if len(entries) == MAX_ENTRIES:
            raise ConfigFileError(
                f"{where}: more than {MAX_ENTRIES:,} entries; a watch list this long is refused"
            )
        entry = _entry(record, where)
        if entry.ticker in seen:
            raise ConfigFileError(f"{where}: duplicate ticker {entry.ticker!r}")
        seen.add(entry.ticker)
        entries.append(entry)
    if not entries:
        raise ConfigFileError(f"{source}: no entries")
    return entries


def _csv_entries(path: Path) -> list[WatchEntry]:
    text = read_config_text(path, "watch list", MAX_FILE_BYTES)
    reader = csv.DictReader(io.StringIO(text, newline=""))

    def located() -> Iterator[tuple[str, dict[str, Any]]]:
        for row in reader:
            record = {k.strip(): v for k, v in row.items() if k is not None}
            if not any((v or "").strip() for v in record.values()):
                continue  # blank line
            record["aliases"] = (record.get("aliases") or "").split("|")
            yield f"{path}: line {reader.line_num}", record

    try:
        if reader.fieldnames is None or "ticker" not in [n.strip() for n in reader.fieldnames]:
            raise ConfigFileError(f"{path}: line 1: header must have a 'ticker' column")
        return _unique_entries(located(), path)
    except csv.Error as exc:
        raise ConfigFileError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from exc
