"""The fuzz harness behind ``moodwire bench faults``: it counts what it should, the same
way for a seed, and every file loader and message target survives it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random

import pytest

from moodwire.bench.fuzz import (
    HOSTILE_NEWS,
    HOSTILE_TOKENS,
    NEWS_KEYS,
    FuzzTarget,
    MalformedResult,
    Refused,
    all_targets,
    cases,
    fuzz,
    loader_targets,
    main,
    message_document,
    message_targets,
    mutate,
)

SEEDS = (b"text,label\nShares jump,positive\n", b'{"text": "Dividend cut", "label": 0}\n')


def _parse_int_ascii(data: bytes) -> int:
    return int(data.decode("ascii"))  # bad bytes and bad digits: ValueError, a clean refusal


def _broken(data: bytes) -> int:
    """Refuses text that is not UTF-8 cleanly, then trips over nearly everything else."""
    text = data.decode("utf-8")
    if "\x00" in text:
        raise ValueError("a NUL")
    return {"ok": 1}[text[:2]]  # KeyError on anything but "ok..."


def test_a_broken_target_crashes_and_the_crashes_are_counted() -> None:
    target = FuzzTarget("toy", SEEDS, _broken, clean=(ValueError,))
    result = fuzz(target, n=300, seed=0)
    assert result.target == "toy" and result.cases == 300
    assert result.crashes + result.accepted + result.refused == 300
    assert result.crashes > 100  # not stopped at the first
    assert result.refused > 0  # non-UTF-8 cases are refusals, not crashes
    assert [k.split(":")[0] for k in result.kinds] == ["KeyError at test_fuzz.py"]
    assert sum(result.kinds.values()) == result.crashes
    example = result.examples[0]
    assert example["error"].startswith("KeyError: ")
    assert example["input"].startswith("b") and len(example["input"]) <= 300
    assert result.seconds >= 0 and result.slowest_case_s >= 0


def test_refusals_and_acceptances_are_counted_apart() -> None:
    target = FuzzTarget("int", (b"8080", b"443", b"-1"), _parse_int_ascii, clean=(ValueError,))
    result = fuzz(target, n=400, seed=2)
    assert result.crashes == 0 and result.examples == [] and result.kinds == {}
    assert result.accepted > 20 and result.refused > 200
    accepted = sum(1 for case in cases(target, 400, 2) if case.strip(b" ").lstrip(b"+-").isdigit())
    assert result.accepted >= accepted  # int() also takes "\t12\n", "1_000"


def test_an_error_outside_clean_is_a_crash_even_when_it_is_a_value_error() -> None:
    strict = FuzzTarget("int", (b"8080",), _parse_int_ascii, clean=(UnicodeDecodeError,))
    result = fuzz(strict, n=200, seed=1)
    assert result.crashes > 0
    assert all(kind.startswith("ValueError at ") for kind in result.kinds)


def test_malformed_results_are_crashes_grouped_by_the_broken_promise() -> None:
    def lying(data: bytes) -> bytes:
        raise MalformedResult("returned an empty text", repr(data))

    result = fuzz(FuzzTarget("liar", SEEDS, lying, clean=(ValueError,)), n=50, seed=0)
    assert result.crashes == 50
    assert result.kinds == {"returned an empty text": 50}


def test_cases_and_results_are_deterministic_for_a_seed() -> None:
    target = FuzzTarget("toy", SEEDS, _broken, clean=(ValueError,))
    assert list(cases(target, 200, seed=7)) == list(cases(target, 200, seed=7))
    assert list(cases(target, 200, seed=7)) != list(cases(target, 200, seed=8))
    first, again = fuzz(target, 200, seed=7), fuzz(target, 200, seed=7)
    assert (first.crashes, first.accepted, first.refused, first.kinds, first.examples) == (
        again.crashes,
        again.accepted,
        again.refused,
        again.kinds,
        again.examples,
    )


def test_cases_mix_mutants_random_bytes_and_generated_files() -> None:
    generated = b"GENERATED"
    target = FuzzTarget("toy", (b"SEED" * 8,), _broken, (ValueError,), lambda rng: generated)
    produced = list(cases(target, 1000, seed=0))
    assert len(produced) == 1000
    assert 100 <= sum(c == generated for c in produced) <= 200  # half of 30 % left unmutated
    assert sum(b"SEED" in c for c in produced) > 400
    assert b"" in produced
    assert any(token in c for c in produced for token in (b"[" * 5000, b"\\ud800", b"\x00"))


def test_mutate_is_seeded_and_changes_the_input() -> None:
    seed = b"ticker,name\nACME,Acme Corp\n"
    mutants = [mutate(seed, random.Random(i)) for i in range(300)]
    assert mutants == [mutate(seed, random.Random(i)) for i in range(300)]
    assert sum(m != seed for m in mutants) > 250
    assert any(m == b"" or len(m) < len(seed) for m in mutants)  # truncations
    assert any(any(t in m for t in HOSTILE_TOKENS if len(t) > 3) for m in mutants)


def test_loader_targets_are_the_documented_six() -> None:
    names = [t.name for t in loader_targets()]
    assert names == [
        "csv_loader",
        "jsonl_loader",
        "watchlist_yaml",
        "watchlist_csv",
        "taxonomy_yaml",
        "label_map",
    ]
    for target in loader_targets():
        for seed in target.seeds:
            target.run(seed)  # every seed is valid input


@pytest.mark.parametrize("target", loader_targets(), ids=lambda t: t.name)
def test_every_loader_survives_2000_cases(target: FuzzTarget) -> None:
    result = fuzz(target, n=2000, seed=0)
    assert result.crashes == 0, result.examples
    assert result.accepted > 50 and result.refused > 50
    assert result.slowest_case_s < 1.0


def test_main_prints_one_json_line_per_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cases", "50", "--seed", "3", "label_map", "csv_loader"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["target"] for r in lines] == ["csv_loader", "label_map"]
    assert all(r["cases"] == 50 and r["crashes"] == 0 for r in lines)
    with pytest.raises(SystemExit):
        main(["no_such_target"])


# -- the messages on Kafka: validator, labels, control -------------------------------------


@pytest.fixture
def sqlite_store(tmp_path):
    from state.store import Store

    store = Store(f"sqlite:///{tmp_path / 'fuzz.db'}")
    yield store
    store.engine.dispose()


def _by_name(stores: list) -> dict[str, FuzzTarget]:
    return {t.name: t for t in message_targets(stores)}


def test_message_targets_are_the_documented_three_and_all_targets_holds_nine(
    sqlite_store,
) -> None:
    assert list(_by_name([sqlite_store])) == ["validator", "label_message", "control_message"]
    assert [t.name for t in all_targets([sqlite_store])][-3:] == list(_by_name([sqlite_store]))
    assert len(all_targets([sqlite_store])) == 9


def test_valid_message_seeds_are_accepted_and_stored_hostile_ones_never_crash(
    sqlite_store,
) -> None:
    targets = _by_name([sqlite_store])
    validator = targets["validator"]
    hostile = set(HOSTILE_NEWS)
    outcomes = {"accepted": 0, "refused": 0}
    for seed in validator.seeds:
        try:
            validator.run(seed)
        except Refused:
            assert seed in hostile, seed[:80]  # a valid seed is never refused
            outcomes["refused"] += 1
        else:
            outcomes["accepted"] += 1
    assert outcomes["refused"] >= 12 and outcomes["accepted"] >= 7
    assert sqlite_store.stats()["rejected"] == outcomes["refused"]  # every dead letter stored
    assert sqlite_store.count_items() >= 7
    for name in ("label_message", "control_message"):
        for seed in targets[name].seeds:
            with contextlib.suppress(ValueError):  # the hostile seeds are refused, one line
                targets[name].run(seed)
    assert sqlite_store.stats()["labels"]["total"] >= 3


def _survives(target: FuzzTarget, n: int) -> None:
    result = fuzz(target, n=n, seed=0)
    assert result.crashes == 0, result.examples
    assert result.accepted > n // 50 and result.refused > n // 50, result
    assert result.slowest_case_s < 1.0


@pytest.mark.parametrize("name", ["validator", "label_message", "control_message"])
def test_every_message_target_survives_1500_cases_on_sqlite(sqlite_store, name: str) -> None:
    _survives(_by_name([sqlite_store])[name], 1500)


@pytest.mark.parametrize("name", ["validator", "label_message"])
def test_message_targets_survive_on_sqlite_and_postgresql_together(
    sqlite_store, pg_url: str, name: str
) -> None:
    from state.store import Store

    pg = Store(pg_url)
    try:
        _survives(_by_name([sqlite_store, pg])[name], 800)
        assert pg.stats()["items" if name == "validator" else "labels"]
    finally:
        pg.engine.dispose()


class _FlakyStore:
    """A store that cannot hold some rows: what a dialect refusing a character looks like."""

    dialect = "flaky"

    def __init__(self, real) -> None:
        self.real = real
        self.calls = 0

    def write_batch(self, scored, rejections, **kw):
        self.calls += 1
        if scored and self.calls % 2:
            raise RuntimeError("value too long for type character varying(64)")
        return self.real.write_batch(scored, rejections, **kw)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_an_accepted_item_that_does_not_store_is_a_crash_of_its_own_case(sqlite_store) -> None:
    result = fuzz(_by_name([_FlakyStore(sqlite_store)])["validator"], n=600, seed=0)
    assert result.crashes > 0
    assert [k.split(":")[0] for k in result.kinds] == ["RuntimeError at test_fuzz.py"]
    assert result.examples[0]["error"].startswith("RuntimeError: value too long")
    assert result.crashes + result.accepted + result.refused == 600


def test_a_rejection_for_an_unexpected_reason_is_a_crash(sqlite_store, monkeypatch) -> None:
    import stream.validate

    def broken(*_args, **_kwargs):
        raise KeyError("ts")  # a bug in validation: the validator itself turns it into data

    monkeypatch.setattr(stream.validate, "_validate", broken)
    result = fuzz(_by_name([sqlite_store])["validator"], n=100, seed=0)
    assert result.crashes == 100 and result.kinds == {"validation failed unexpectedly": 100}


def test_a_control_message_that_changes_in_a_round_trip_is_a_crash(
    sqlite_store, monkeypatch
) -> None:
    from stream.schemas import ControlMessage

    original = ControlMessage.model_dump_json

    def lossy(self, **kw):
        return original(self.model_copy(update={"actor": "someone else"}), **kw)

    monkeypatch.setattr(ControlMessage, "model_dump_json", lossy)
    result = fuzz(_by_name([sqlite_store])["control_message"], n=300, seed=0)
    assert result.crashes > 0 and result.kinds == {"round trip changed it": result.crashes}


def test_message_documents_are_json_objects_mostly_and_seeded() -> None:
    bases = ({"text": "ACME up", "id": "x"},)
    docs = [message_document(random.Random(i), NEWS_KEYS, bases) for i in range(400)]
    assert docs == [message_document(random.Random(i), NEWS_KEYS, bases) for i in range(400)]
    parsed = []
    for doc in docs:
        with contextlib.suppress(ValueError, RecursionError):
            parsed.append(json.loads(doc.decode("utf-8")))
    assert sum(isinstance(p, dict) for p in parsed) > 250
    assert sum(isinstance(p, dict) and p.get("text") == "ACME up" for p in parsed) > 50
    assert any(b"NaN" in d or b"Infinity" in d for d in docs)
    assert any(b"\\u0000" in d or b"\x00" in d for d in docs)


def test_a_target_that_generates_more_gets_more_generated_cases() -> None:
    generated = b"GENERATED"
    target = FuzzTarget("toy", (b"SEED" * 8,), _broken, (ValueError,), lambda rng: generated)
    more = dataclasses.replace(target, generated=0.6)
    assert 100 <= sum(c == generated for c in cases(target, 1000, seed=0)) <= 200
    assert 250 <= sum(c == generated for c in cases(more, 1000, seed=0)) <= 350


def test_main_runs_message_targets_on_the_stores_given(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'extra.db'}"
    assert main(["--cases", "200", "--store", url, "validator", "control_message"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["target"] for r in lines] == ["validator", "control_message"]
    from state.store import Store

    extra = Store(url)
    # Every case written there too: each refusal's dead letter, each accepted id.
    assert extra.stats()["rejected"] == lines[0]["refused"]
    assert 0 < extra.count_items() <= lines[0]["accepted"]
    extra.engine.dispose()
