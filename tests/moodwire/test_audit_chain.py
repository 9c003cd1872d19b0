"""The audit log's hash chain: intact logs verify, and a row changed, deleted or moved
behind the store's back is named, first one first. On SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import clean_env, last_json, moodwire_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state.audit_chain import GENESIS, Break, row_hash, verify_chain
from state.store import Store, audit_log

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'a.db'}"
    return request.getfixturevalue("pg_fresh")


def _tamper(store: Store, sql: str, **params: object) -> None:
    """Change the log directly, as someone with the database's password would; on
    PostgreSQL with the append-only trigger switched off first, as its owner can."""
    with store.engine.begin() as conn:
        pg = store.dialect == "postgresql"
        if pg:
            conn.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        conn.execute(sa.text(sql), params)
        if pg:
            conn.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))


def _verify(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return moodwire_cli(["audit", "verify", *extra], clean_env(Path("/nonexistent"), store_url=url))


# -- the command, on a real store --------------------------------------------------------


def test_verify_passes_an_intact_log_and_names_a_changed_row(url: str) -> None:
    store = Store(url)
    for i in range(6):
        store.audit(f"op{i}", "acknowledge", f"al-{i}", "seen", {"i": i, "note": "ünï"})
    res = _verify(url)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("audit log intact: 6 entries, head ")
    seqs = [r["seq"] for r in store.audit_rows()]

    _tamper(store, "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = :s", s=seqs[3])
    res = _verify(url)
    assert res.returncode == 1
    assert f"seq {seqs[3]} was changed" in res.stdout
    out = last_json(_verify(url, "--json").stdout)
    assert out["intact"] is False and out["count"] == 4
    assert out["broken"]["seq"] == seqs[3] and out["broken"]["kind"] == "changed"


def test_verify_names_the_row_after_a_deleted_one_and_a_cut_off_end(url: str) -> None:
    store = Store(url)
    for i in range(5):
        store.audit("ann", "promote", f"v{i}", None, {})
    seqs = [r["seq"] for r in store.audit_rows()]
    head = last_json(_verify(url, "--json").stdout)["head"]
    assert head.startswith(f"{seqs[-1]}:")

    _tamper(store, "DELETE FROM audit_log WHERE seq = :s", s=seqs[-1])  # the newest one
    assert _verify(url).returncode == 0  # a chain alone cannot see its end cut off ...
    res = _verify(url, "--expect", head)  # ... the head noted earlier can
    assert res.returncode == 1 and f"seq {seqs[-1]} does not follow" in res.stdout

    _tamper(store, "DELETE FROM audit_log WHERE seq = :s", s=seqs[1])
    out = last_json(_verify(url, "--json").stdout)
    assert out["broken"] == {
        "seq": seqs[2],
        "kind": "missing",
        "after_seq": seqs[0],
        "detail": f"seq {seqs[2]} does not follow seq {seqs[0]}: a row between them is "
        "missing (or the row before was rewritten)",
    }


def test_verify_refuses_a_bad_expect_and_a_store_not_yet_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    Store(url)
    res = _verify(url, "--expect", "12")
    assert res.returncode == 2 and "--expect wants SEQ:HASH" in res.stderr
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    res = _verify(empty)
    assert res.returncode == 2 and "run `moodwire store upgrade` first" in res.stderr
    assert "Traceback" not in res.stderr


def test_postgresql_refuses_update_delete_and_truncate_of_the_log(pg_fresh: str) -> None:
    store = Store(pg_fresh)
    store.audit("ann", "promote", "v2", "better", {})
    for sql in (
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as c:
            c.execute(sa.text(sql))
    assert store.verify_audit().count == 1 and store.verify_audit().intact


def test_a_postgresql_sequence_behind_the_log_does_not_stop_writes(pg_fresh: str) -> None:
    store = Store(pg_fresh)
    store.audit("ann", "promote", "v1", None, {})
    store.audit("ann", "promote", "v2", None, {})
    with store.engine.begin() as conn:  # as a restore that kept the rows' seq leaves it
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('audit_log', 'seq'), 1)"))
    store.audit("ann", "rollback", "v1", None, {})
    assert [r["seq"] for r in store.audit_rows()] == [1, 2, 3]
    assert store.verify_audit().intact


WRITER = textwrap.dedent(
    """
    import sys
    from state.store import Store
    store = Store(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # go
    for i in range(int(sys.argv[3])):
        with store.audited(sys.argv[2], "acknowledge", f"al-{i}", None, {"i": i}):
            pass
    """
)


def test_concurrent_writers_never_fork_the_chain(url: str) -> None:
    """Four processes append at once: every row lands, in one unbroken chain."""
    Store(url)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, f"w{k}", "25"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    for w in writers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    for w in writers:  # all at once
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    for w in writers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    store = Store(url)
    check = store.verify_audit()
    assert check.intact and check.count == 100
    rows = store.audit_rows(limit=200)
    assert {r["actor"] for r in rows} == {"w0", "w1", "w2", "w3"}
    assert len({r["prev_hash"] for r in rows}) == 100  # no two rows claim one predecessor


# -- the chain's logic, on random logs and random tampering -----------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
ENTRY = st.fixed_dictionaries(
    {
        "actor": st.text(min_size=1, max_size=12),
        "action": st.sampled_from(["promote", "rollback", "acknowledge", "mute", "retrain"]),
        "target": st.none() | st.text(max_size=12),
        "reason": st.none() | st.text(max_size=20),
        "details": st.dictionaries(st.text(max_size=6), JSON, max_size=3),
    }
)
FIELDS = ["ts", "actor", "action", "target", "reason", "details", "prev_hash", "hash"]


def _chain(entries: list[dict], gaps: list[int]) -> list[dict]:
    rows, prev, seq = [], GENESIS, 0
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    for i, (entry, gap) in enumerate(zip(entries, gaps, strict=True)):
        seq += 1 + gap  # PostgreSQL's sequence leaves gaps
        row = dict(entry, seq=seq, ts=t0 + timedelta(seconds=i, microseconds=i), prev_hash=prev)
        row["hash"] = prev = row_hash(row)
        rows.append(row)
    return rows


def _other(field: str, value: object) -> object:
    """A value unlike ``value`` once canonicalised."""
    if field == "ts":
        return value + timedelta(microseconds=1)
    if field == "details":
        return {**value, "tampered": True}
    if field in ("prev_hash", "hash"):
        return ("f" if value[0] != "f" else "e") + value[1:]
    return "x" if value != "x" else "y"


@st.composite
def tampers(draw: st.DrawFn, n: int) -> tuple:
    """One tamper of a log of ``n`` rows: ("change", i, field), ("delete", k) or
    ("swap", i, j) with i < j (the rows trade contents, each keeping its seq)."""
    kinds = ["change", "delete", "swap"] if n > 1 else ["change", "delete"]
    kind = draw(st.sampled_from(kinds))
    if kind == "change":
        return ("change", draw(st.integers(0, n - 1)), draw(st.sampled_from(FIELDS)))
    if kind == "delete":
        return ("delete", draw(st.integers(0, n - 1)))
    i, j = sorted(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True)))
    return ("swap", i, j)


def _apply(rows: list[dict], tamper: tuple) -> list[dict]:
    bad = [dict(r) for r in rows]
    if tamper[0] == "change":
        _, i, field = tamper
        bad[i][field] = _other(field, bad[i][field])
    elif tamper[0] == "delete":
        del bad[tamper[1]]
    else:
        _, i, j = tamper
        bad[i], bad[j] = dict(rows[j], seq=rows[i]["seq"]), dict(rows[i], seq=rows[j]["seq"])
    return bad


def _expected(rows: list[dict], tamper: tuple) -> Break:
    """The first broken entry, worked out from the tamper alone."""
    if tamper[0] in ("change", "swap"):
        return Break(rows[tamper[1]]["seq"], "changed")
    k = tamper[1]
    after = rows[k - 1]["seq"] if k else None
    if k == len(rows) - 1:  # the end cut off: only the noted head shows it
        return Break(rows[k]["seq"], "missing", after)
    return Break(rows[k + 1]["seq"], "missing", after)


@st.composite
def logs_and_tampers(draw: st.DrawFn) -> tuple[list[dict], tuple]:
    n = draw(st.integers(1, 12))
    entries = draw(st.lists(ENTRY, min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return _chain(entries, gaps), draw(tampers(n))


@settings(max_examples=400, deadline=None)
@given(logs_and_tampers())
def test_verify_names_the_first_broken_entry_of_any_single_tamper(case) -> None:
    rows, tamper = case
    head = (rows[-1]["seq"], rows[-1]["hash"])
    intact = verify_chain(rows, expect=head)
    assert intact.intact and intact.count == len(rows) and intact.head_hash == head[1]
    assert verify_chain(_apply(rows, tamper), expect=head).broken == _expected(rows, tamper)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(entries=st.lists(ENTRY, min_size=1, max_size=8), data=st.data())
def test_the_store_names_the_first_broken_entry_after_tampering_by_sql(
    tmp_path_factory: pytest.TempPathFactory, entries: list[dict], data: st.DataObject
) -> None:
    """The same, end to end on SQLite: rows the store wrote (its seqs, times and JSON
    round trips), then one tamper done in the database."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('h') / 'a.db'}")
    for e in entries:
        store.audit(e["actor"], e["action"], e["target"], e["reason"], e["details"])
    stored = store.audit_rows(limit=100)
    head = (stored[-1]["seq"], stored[-1]["hash"])
    assert store.verify_audit(head).intact and store.verify_audit().count == len(entries)
    tamper = data.draw(tampers(len(stored)))
    bad = _apply(stored, tamper)
    with store.engine.begin() as conn:  # rewrite the table as the tampered rows
        conn.execute(audit_log.delete())
        if bad:
            conn.execute(audit_log.insert(), bad)
    assert store.verify_audit(head).broken == _expected(stored, tamper)
