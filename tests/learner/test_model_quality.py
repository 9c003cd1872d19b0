"""The acceptance bar for bootstrapping, on real labelled financial text (slow: minutes).

Runs the commands exactly as a user would: ``bootstrap`` on the train split of
Twitter Financial News, ``eval`` on its validation split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import last_json, moodwire_cli

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "twitter-financial-news-sentiment"
LABEL_MAP = "0=negative,1=positive,2=neutral"


@pytest.mark.slow
@pytest.mark.integration
def test_bootstrap_reaches_086_accuracy_on_twitter_financial_news(tmp_path: Path) -> None:
    if not (DATA / "sent_train.csv").is_file():
        pytest.skip(f"{DATA} is absent: the shared data set is needed for this test")
    common = ["--registry", str(tmp_path / "reg"), "--data-dir", str(tmp_path)]
    boot = moodwire_cli(
        ["bootstrap", "--train", str(DATA / "sent_train.csv"), "--label-map", LABEL_MAP,
         "--no-progress", *common],
        timeout=1800,
    )  # fmt: skip
    assert boot.returncode == 0, boot.stderr[-3000:]
    trained = last_json(boot.stdout)
    ev = moodwire_cli(
        ["eval", "--data", str(DATA / "sent_valid.csv"), "--label-map", LABEL_MAP, *common],
        timeout=600,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = last_json(ev.stdout)
    print(
        json.dumps(
            {
                "train_seconds": trained["train_seconds"],
                "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
            }
        )
    )
    assert metrics["n"] == 2388
    assert metrics["accuracy"] >= 0.86, metrics
