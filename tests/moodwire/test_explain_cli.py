"""``moodwire explain``: the serving version's word weights, as a table or JSON; mistakes
are one line and exit 2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from helpers import last_json, moodwire_cli

from moodwire.cli import main
from state.registry import Registry

TEXT = "Acme beats quarterly earnings estimates"


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    # main() points structlog at this test's captured stderr: put it back afterwards.
    logging = structlog.get_config()
    yield
    structlog.configure(**logging)


def test_explain_prints_the_words_of_the_serving_version_as_json(
    model_registry: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MOODWIRE_REGISTRY": str(model_registry),
        "MOODWIRE_DATA_DIR": str(tmp_path),
    }
    res = moodwire_cli(["explain", TEXT, "--json", "--steps", "32"], env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert (out["version"], out["n_steps"], out["truncated"]) == ("v1", 32, False)
    assert out["label"] == out["predicted"] in ("negative", "neutral", "positive")
    assert [w["word"] for w in out["words"]] == TEXT.split()
    assert all(TEXT[w["start"] : w["end"]] == w["word"] for w in out["words"])
    total = sum(w["attribution"] for w in out["words"])
    assert total == pytest.approx(out["probability"] - out["baseline_probability"], abs=0.05)
    assert abs(out["delta"]) < 0.05


def test_explain_shows_a_table_by_weight_and_explains_another_label(
    model_registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--registry", str(model_registry), "--data-dir", str(tmp_path)]
    assert main(["explain", TEXT, "--label", "Neutral", "--steps", "16", *where]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("v1: neutral, probability ")
    header = out.index(next(line for line in out if line.split()[:2] == ["rank", "weight"]))
    rows = [line.split() for line in out[header + 1 :]]
    assert [int(r[0]) for r in rows] == list(range(1, len(TEXT.split()) + 1))
    assert sorted(r[-1] for r in rows) == sorted(TEXT.split())
    weights = [abs(float(r[1])) for r in rows]
    assert weights == sorted(weights, reverse=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["  "], "there is no text to explain"),
        (
            [TEXT, "--label", "bullish"],
            "unknown label 'bullish': one of negative, neutral, positive",
        ),
        ([TEXT, "--steps", "1"], "--steps must be 2..1000"),
        ([TEXT, "--version", "v9"], "v9"),
    ],
)
def test_explain_refuses_bad_input_in_one_line(
    model_registry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert (
        main(["explain", *argv, "--registry", str(model_registry), "--data-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moodwire explain: ") and message in err[0], err


def test_explain_without_a_serving_version_says_how_to_name_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Registry(tmp_path / "registry")
    argv = ["explain", TEXT, "--registry", str(tmp_path / "registry"), "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "no version serves in" in err and "--version" in err
