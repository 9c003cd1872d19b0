"""``--sweep-batches`` takes any text a user types: sizes, or one clear argparse error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moodwire.cli import _batch_sizes, _budget, _non_negative_int, build_parser


def _parsed_or_refused(parse: Callable[[str], Any], spec: str) -> Any:
    """What ``parse`` made of ``spec``, or None when it refused it with one clear error."""
    try:
        return parse(spec)
    except argparse.ArgumentTypeError as exc:
        assert repr(spec) in str(exc)
        return None


@given(st.text())
def test_any_text_is_batch_sizes_or_a_clear_error(spec: str) -> None:
    sizes = _parsed_or_refused(_batch_sizes, spec)
    if sizes is not None:
        assert sizes and all(isinstance(n, int) and 1 <= n <= 65536 for n in sizes)


@given(st.lists(st.integers(1, 65536), min_size=1, max_size=8))
def test_sizes_written_out_are_read_back(sizes: list[int]) -> None:
    assert _batch_sizes(",".join(map(str, sizes))) == tuple(sizes)


@pytest.mark.parametrize("spec", ["", ",", "0", "-4", "64,x", "1e3", "70000"])
def test_the_command_line_refuses_bad_sizes(spec: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "throughput", "--sweep-batches", spec])
    assert exc.value.code == 2 and "--sweep-batches" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["nan", "inf", "-1", "3601", "x", ""])
def test_the_command_line_refuses_bad_training_seconds(
    spec: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "throughput", "--while-training", spec])
    assert exc.value.code == 2 and "--while-training" in capsys.readouterr().err


@given(st.text())
def test_any_text_is_a_time_budget_or_a_clear_error(spec: str) -> None:
    value = _parsed_or_refused(_budget, spec)
    if value is not None:
        assert 0 < value < float("inf")


@given(st.text())
def test_any_text_is_a_count_or_a_clear_error(spec: str) -> None:
    value = _parsed_or_refused(_non_negative_int, spec)
    if value is not None:
        assert isinstance(value, int) and value >= 0


@pytest.mark.parametrize("spec", ["0", "-1", "nan", "inf", "-inf", "x", ""])
def test_bootstrap_refuses_a_bad_time_budget(spec: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bootstrap", "--train", "f.csv", "--time-budget", spec])
    assert exc.value.code == 2 and "--time-budget" in capsys.readouterr().err
