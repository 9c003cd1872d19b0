"""The fuzz harness behind ``moodwire bench faults``: it counts what it should, the same
way for a seed, and every file loader survives it."""

from __future__ import annotations

import json
import random

import pytest

from moodwire.fuzz import (
    HOSTILE_TOKENS,
    FuzzTarget,
    MalformedResult,
    cases,
    fuzz,
    loader_targets,
    main,
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
