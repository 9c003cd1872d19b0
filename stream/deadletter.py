"""Dead letters: a record that failed for a reason of its own, kept whole and storable.

Whatever the record held (NUL bytes, invalid UTF-8, a megabyte of garbage),
its dead letter fits the store's ``rejected`` table on SQLite and PostgreSQL
and the ``news.dlq`` topic: a readable preview (:func:`stream.schemas.storable_text`
of the UTF-8 decoding with replacement characters) plus the exact bytes in
base64, up to ``keep_bytes``.

>>> from datetime import UTC, datetime
>>> row = rejection_row("news", 0, 7, b'{"text": "a\\x00b"', "schema", "bad", datetime.now(UTC))
>>> "\\x00" in row["raw"], base64.b64decode(row["raw_base64"]) == b'{"text": "a\\x00b"'
(False, True)
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from stream.masking import Masker, raw_digest
from stream.publish import Outgoing
from stream.schemas import Rejection, storable_text

PREVIEW_CHARS = 2000  # characters of a rejected value shown to the operator
KEEP_BYTES = 64 * 1024  # bytes of it kept exactly (base64) in the store and the DLQ message


def rejection_row(
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None,
    reason: str,
    detail: str,
    now: datetime,
    *,
    keep_bytes: int = KEEP_BYTES,
    mask: Masker | None = None,
) -> dict[str, Any]:
    """A row for the store's ``rejected`` table.

    With ``mask`` the original never reaches the row: the preview and the detail
    are masked, the exact bytes are not kept, and ``raw_sha256`` identifies it.

    >>> row = rejection_row("news", 0, 1, b'{"t": "jane@example.com"', "malformed_json", "x",
    ...                     datetime.now(UTC), mask=Masker())
    >>> row["raw"], row["raw_base64"], row["raw_bytes"]
    ('{"t": "[EMAIL]"', None, 24)
    """
    value = bytes(raw or b"")
    if mask is not None:
        preview = mask.preview(value, PREVIEW_CHARS)
        detail = mask.mask(detail)
    else:
        preview = value[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")[:PREVIEW_CHARS]
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "reason": reason,
        "detail": storable_text(detail)[:2000],
        "raw": storable_text(preview),
        "raw_base64": None if mask else base64.b64encode(value[:keep_bytes]).decode("ascii"),
        "raw_bytes": len(value),
        "raw_sha256": raw_digest(value),
        "rejected_at": now,
    }


def dlq_key(row: dict[str, Any]) -> bytes:
    """The dead letter's Kafka key: where the record came from (so a resend is recognised)."""
    return f"{row['topic']}:{row['partition']}:{row['offset']}".encode()


def dlq_message(
    row: dict[str, Any], dlq_topic: str, *, ref: tuple[str, Any] | None = None
) -> Outgoing:
    """The ``news.dlq`` message for a rejection row (``ref`` default: ``("dlq", seq)``)."""
    at = row["rejected_at"]
    raw_b64 = row.get("raw_base64")
    rej = Rejection(
        reason=row["reason"],
        detail=row["detail"],
        topic=row["topic"],
        partition=row["partition"],
        offset=row["offset"],
        raw=row["raw"],
        rejected_at=at if at.tzinfo else at.replace(tzinfo=UTC),
        raw_base64=raw_b64,
        raw_bytes=row.get("raw_bytes"),
        raw_truncated=bool(raw_b64 is not None and (row.get("raw_bytes") or 0) > KEEP_BYTES),
        raw_sha256=row.get("raw_sha256"),
    )
    value = rej.model_dump_json().encode("utf-8")
    return Outgoing(dlq_topic, dlq_key(row), value, ref or ("dlq", row["seq"]))
