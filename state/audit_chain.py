"""The audit log's hash chain: how a row is hashed, and how a log is checked.

Each row carries ``prev_hash`` (the hash of the row before it; :data:`GENESIS` for
the first) and ``hash``, the SHA-256 of a canonical JSON of ``(seq, ts, actor,
action, target, reason, details, prev_hash)``. Changing any field of a row breaks
its own hash; deleting a row breaks the link of the one after it. The format is a
contract between the store, the ``0002_audit_chain`` migration (which chained the
rows written before it) and ``moodwire audit verify``: change it only with a
migration that re-chains.

>>> first = {"seq": 1, "ts": "2026-01-05T09:00:00+00:00", "actor": "ann", "action": "promote",
...          "target": "v2", "reason": "better", "details": {}, "prev_hash": GENESIS}
>>> first["hash"] = row_hash(first)
>>> second = dict(first, seq=2, action="rollback", prev_hash=first["hash"])
>>> second["hash"] = row_hash(second)
>>> verify_chain([first, second]).intact
True
>>> verify_chain([dict(first, actor="mallory"), second]).broken
Break(seq=1, kind='changed', after_seq=None)
>>> verify_chain([second]).broken
Break(seq=2, kind='missing', after_seq=None)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

GENESIS = "0" * 64  # the prev_hash of the first row

FIELDS = ("seq", "ts", "actor", "action", "target", "reason", "details", "prev_hash")


def canonical_ts(ts: datetime | str) -> str:
    """An instant as the chain writes it: UTC, ISO 8601, always with microseconds.

    SQLite hands datetimes back naive (they are UTC) and PostgreSQL in the session's
    time zone: both give the same text.
    """
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return ts.isoformat(timespec="microseconds")


def canonical_details(details: Any) -> Any:
    """``details`` as the JSON column gives it back (string keys, lists for tuples)."""
    return json.loads(json.dumps(details if details is not None else {}))


def canonical_json(row: Mapping[str, Any]) -> str:
    """The text a row's hash is taken over: sorted keys, no spaces, UTF-8."""
    body = {name: row.get(name) for name in FIELDS}
    body["seq"] = int(body["seq"])
    body["ts"] = canonical_ts(body["ts"])
    body["details"] = canonical_details(body["details"])
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(row).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Break:
    """The first entry that does not check out.

    ``kind`` is ``changed`` (the row's fields no longer give its hash) or
    ``missing`` (the row is intact but does not follow the row before it: a row in
    between was deleted, or the one before was rewritten with a new hash).
    ``after_seq`` is the last intact row before the break (None: none).
    """

    seq: int
    kind: Literal["changed", "missing"]
    after_seq: int | None = None

    def describe(self) -> str:
        if self.kind == "changed":
            return f"seq {self.seq} was changed: its fields no longer match its hash"
        before = f"seq {self.after_seq}" if self.after_seq is not None else "the start of the log"
        return (
            f"seq {self.seq} does not follow {before}: a row between them is missing "
            f"(or the row before was rewritten)"
        )


@dataclass(frozen=True)
class ChainCheck:
    """What :func:`verify_chain` found: rows read, the last intact row, the first break."""

    count: int
    head_seq: int | None
    head_hash: str | None
    broken: Break | None

    @property
    def intact(self) -> bool:
        return self.broken is None


def verify_chain(
    rows: Iterable[Mapping[str, Any]], *, expect: tuple[int, str] | None = None
) -> ChainCheck:
    """Walk rows in ``seq`` order and report the first broken entry.

    A chain alone cannot tell that rows were cut off its end; ``expect`` (a
    ``(seq, hash)`` an operator noted earlier, e.g. from a previous verify) must
    still be in the log with that hash.
    """
    count, prev_seq, prev_hash = 0, None, GENESIS
    seen_expected: str | None = None
    for row in rows:
        count += 1
        seq = int(row["seq"])
        if row.get("hash") != row_hash(row):
            return ChainCheck(count, prev_seq, _head(prev_seq, prev_hash), Break(seq, "changed"))
        if row.get("prev_hash") != prev_hash:
            return ChainCheck(
                count, prev_seq, _head(prev_seq, prev_hash), Break(seq, "missing", prev_seq)
            )
        if expect is not None and seq == expect[0]:
            seen_expected = row["hash"]
        prev_seq, prev_hash = seq, row["hash"]
    if expect is not None and seen_expected != expect[1]:
        # Absent, or present with another hash (rewritten, and everything after it too).
        kind: Literal["changed", "missing"] = "missing" if seen_expected is None else "changed"
        return ChainCheck(
            count, prev_seq, _head(prev_seq, prev_hash), Break(expect[0], kind, prev_seq)
        )
    return ChainCheck(count, prev_seq, _head(prev_seq, prev_hash), None)


def _head(seq: int | None, hash_: str) -> str | None:
    return None if seq is None else hash_
