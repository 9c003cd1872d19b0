"""The command line as scripts use it: exit codes, last-line JSON, clear errors."""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from helpers import TEST_ORIGINS, last_json, moodwire_cli, read_all, settings_env, wait_until

from moodwire.settings import Settings
from state.registry import Registry
from state.store import Store
from stream.access import hash_password
from stream.broker import free_port
from stream.synthetic import labelled_headlines

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def labelled_csv(tmp_path: Path) -> Path:
    path = tmp_path / "labelled.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(labelled_headlines(90, seed=4))
    return path


def test_help_explains_every_command() -> None:
    out = moodwire_cli(["--help"]).stdout
    for name in (
        "demo",
        "broker",
        "worker",
        "produce",
        "bootstrap",
        "eval",
        "stats",
        "bench",
        "learner",
        "retrain",
        "alerts",
        "backtest",
        "explain",
    ):
        assert name in out
    assert "MOODWIRE_BOOTSTRAP_SERVERS" in out


@pytest.mark.integration
def test_broker_command_prints_its_address_creates_topics_and_stops_on_sigterm(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moodwire",
            "broker",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == f"bootstrap: 127.0.0.1:{port}"
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        assert {
            "news",
            "news.scored",
            "news.dlq",
            "news.labels",
            "moodwire.alerts",
            "moodwire.control",
        } <= set(admin.list_topics())
        admin.close()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0 and time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.integration
def test_eval_and_stats_print_json_last(settings: Settings, labelled_csv: Path) -> None:
    env = settings_env(settings)
    res = moodwire_cli(["eval", "--data", str(labelled_csv)], env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["version"] == "v1" and out["n"] == 90
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["macro_f1"] <= 1
    assert sum(map(sum, out["confusion_matrix"])) == 90
    # Each class's precision and recall agree with the confusion matrix (rows: true).
    matrix, labels = out["confusion_matrix"], out["labels"]
    for i, label in enumerate(labels):
        row, col = sum(matrix[i]), sum(r[i] for r in matrix)
        c = out["per_class"][label]
        assert c["recall"] == pytest.approx(matrix[i][i] / row if row else 0.0)
        assert c["precision"] == pytest.approx(matrix[i][i] / col if col else 0.0)
    assert 0 <= out["ece"] <= 1 and out["ece_bins"] == 15
    wrong = out["confidently_wrong"]
    n_wrong = 90 - sum(matrix[i][i] for i in range(len(labels)))
    assert len(wrong) == min(10, n_wrong)
    assert all(w["predicted"] != w["label"] for w in wrong)
    assert [w["confidence"] for w in wrong] == sorted(
        (w["confidence"] for w in wrong), reverse=True
    )
    none = last_json(
        moodwire_cli(["eval", "--data", str(labelled_csv), "--wrong", "0"], env).stdout
    )
    assert "confidently_wrong" not in none and none["accuracy"] == out["accuracy"]
    bad = moodwire_cli(["eval", "--data", str(labelled_csv), "--wrong", "-1"], env)
    assert bad.returncode == 2 and "0 or more" in bad.stderr
    # Scored as it serves: the version's ONNX export on this CPU; PyTorch when asked.
    assert out["engine"] == "onnx", out
    torch_run = last_json(
        moodwire_cli(
            ["eval", "--data", str(labelled_csv)], {**env, "MOODWIRE_RUNTIME": "torch"}
        ).stdout
    )
    assert torch_run["engine"] == "torch-fused", torch_run
    # int8 weights in the classifier's own layers may flip a borderline text or two.
    assert abs(torch_run["accuracy"] - out["accuracy"]) <= 2 / 90, (out, torch_run)
    stats = last_json(moodwire_cli(["stats"], env).stdout)
    assert {"items", "rejected", "by_label", "by_model_version"} <= set(stats)


@pytest.mark.integration
def test_bootstrap_writes_a_version_with_its_card(tmp_path: Path, labelled_csv: Path) -> None:
    reg = tmp_path / "reg"
    res = moodwire_cli(
        [
            "bootstrap",
            "--train",
            str(labelled_csv),
            "--registry",
            str(reg),
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--holdout",
            "0.2",
            "--no-progress",
        ]
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = last_json(res.stdout)
    assert out["version"] == "v1" and out["serving"] is True
    card = json.loads((reg / "versions" / "v1" / "card.json").read_text())
    assert card["data"]["n_train"] == 72 and card["data"]["n_holdout"] == 18
    assert {"accuracy", "macro_f1", "confusion_matrix"} <= set(card["metrics"]["holdout"])
    assert card["train"]["samples_seen"] > 0 and card["params"]["epochs"] == 1
    assert (reg / "versions" / "v1" / "model.safetensors").is_file()
    assert not list((reg / "versions" / "v1").glob("*.bin"))
    models = last_json(
        moodwire_cli(["models", "--registry", str(reg), "--data-dir", str(tmp_path)]).stdout
    )
    assert models["serving"] == "v1" and models["versions"][0]["version"] == "v1"


def test_user_errors_are_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "numeric.csv"
    bad.write_text("text,label\nup,1\ndown,0\n")
    res = moodwire_cli(["bootstrap", "--train", str(bad), "--registry", str(tmp_path / "r")])
    assert res.returncode == 2 and "--label-map" in res.stderr and "Traceback" not in res.stderr
    res = moodwire_cli(
        ["eval", "--data", str(tmp_path / "missing.csv"), "--registry", str(tmp_path / "r")]
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = moodwire_cli(
        ["promote", "v7", "--registry", str(tmp_path / "r"), "--data-dir", str(tmp_path)],
        env={**os.environ, "MOODWIRE_USER": "nobody", "MOODWIRE_CREDENTIAL": "t0ken"},
    )
    assert res.returncode == 2 and "wrong user name or password" in res.stderr
    res = moodwire_cli(
        ["bench", "continual", "--phases", str(bad), str(bad), "--label-map", "0=negative,1=positive",
         "--reserve", "1.5", "--out", str(tmp_path / "c.json"), "--data-dir", str(tmp_path)]
    )  # fmt: skip
    assert res.returncode == 2 and "reserve must be in (0, 1)" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "c.json").exists()
    res = moodwire_cli(
        [
            "worker",
            "--registry",
            str(tmp_path / "empty"),
            "--data-dir",
            str(tmp_path),
            "--bootstrap-servers",
            "127.0.0.1:1",
        ],
        timeout=120,
    )
    assert res.returncode == 2 and "moodwire bootstrap" in res.stderr


@pytest.mark.integration
def test_produce_publishes_a_file_as_a_feed(settings: Settings, tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text(
        "\n".join(json.dumps({"id": f"f{i}", "text": f"headline {i}"}) for i in range(25))
    )
    res = moodwire_cli(["produce", str(feed), "--rate", "200"], settings_env(settings))
    assert res.returncode == 0, res.stderr[-2000:]
    assert last_json(res.stdout)["sent"] == 25
    wait_until(
        lambda: len(read_all(settings.bootstrap_servers, settings.topics.news)) == 25,
        10,
        "25 records on news",
    )


def test_alerts_and_backtest_explain_bad_input(tmp_path) -> None:  # noqa: ANN001
    from moodwire.cli import main

    env_store = ["--store", f"sqlite:///{tmp_path / 'x.db'}"]
    assert main(["alerts", *env_store]) == 0
    assert main(["alerts", "--since", "last tuesday", *env_store]) == 2
    no_ts = tmp_path / "no_ts.csv"
    no_ts.write_text("text\nACME beats estimates\n", encoding="utf-8")
    assert main(["backtest", str(no_ts), *env_store]) == 2
    assert main(["backtest", str(tmp_path / "missing.csv"), *env_store]) == 2


# -- operator actions need the operator credential --------------------------------------

TOKEN = "s3cret-operator"


@pytest.fixture
def operator_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Registry, Store]]:
    """A registry where v1 then v2 served (v3 written), a store, no credential presented."""
    reg = Registry(tmp_path / "registry")
    for payload in "abc":
        reg.write_version(lambda d, p=payload: (d / "weights.txt").write_text(p), {})
    reg.promote("v1")
    reg.promote("v2")
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    for name in ("MOODWIRE_USER", "MOODWIRE_CREDENTIAL"):
        monkeypatch.delenv(name, raising=False)
    store = Store(url)
    with store.engine.begin() as conn:  # one hash for all: Argon2 is slow on purpose
        hashed = hash_password(TOKEN)
        for name, role in (("ann", "operator"), ("bob", "operator"), ("cy", "operator"),
                           ("vic", "viewer")):  # fmt: skip
            store.add_user_in(conn, name, role, hashed, None)
    monkeypatch.setenv("MOODWIRE_REGISTRY", str(reg.root))
    monkeypatch.setenv("MOODWIRE_STORE_URL", url)
    monkeypatch.setenv("MOODWIRE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MOODWIRE_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # refused before any send
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: no prompt
    # main() points structlog at this test's captured stderr: put it back afterwards.
    logging = structlog.get_config()
    yield reg, Store(url)
    structlog.configure(**logging)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], words: str) -> None:
    from moodwire.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_promote_rollback_and_retrain_are_refused_without_the_right_credential(
    operator_env: tuple[Registry, Store],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg, store = operator_env
    before = reg.pointer_state()
    actions = (["promote", "v3"], ["rollback"], ["retrain"])
    for argv in actions:
        _refused([*argv, "--user", "ann"], capsys, "this action needs ann's password")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("guess\n")
    for argv in actions:
        _refused(
            [*argv, "--user", "ann", "--credential-file", str(wrong)],
            capsys,
            "wrong user name or password",
        )
    _refused(["promote", "v3", "--credential-file", str(tmp_path / "none.txt")], capsys, "none.txt")
    monkeypatch.setenv("MOODWIRE_CREDENTIAL", TOKEN)
    for argv in actions:  # the right password of a viewer
        _refused([*argv, "--user", "vic"], capsys, "needs the operator role; vic is viewer")
    assert reg.pointer_state() == before
    assert {r["action"] for r in store.audit_rows()} == {"sign_in", "sign_in_failed"}


@pytest.mark.integration
def test_the_right_credential_from_env_file_or_prompt_is_accepted(
    broker: str,
    operator_env: tuple[Registry, Store],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moodwire.cli import main

    reg, store = operator_env
    monkeypatch.setenv("MOODWIRE_BOOTSTRAP_SERVERS", broker)
    monkeypatch.setenv("MOODWIRE_TOPICS__CONTROL", f"moodwire.control-{tmp_path.name}")
    monkeypatch.setenv("MOODWIRE_CREDENTIAL", TOKEN)
    monkeypatch.setenv("MOODWIRE_ORIGINS", json.dumps(TEST_ORIGINS))  # the retrain is signed
    assert main(["promote", "v3", "--user", "ann", "--reason", "better"]) == 0
    assert last_json(capsys.readouterr().out) == {"serving": "v3", "previous": "v2"}

    monkeypatch.delenv("MOODWIRE_CREDENTIAL")
    right = tmp_path / "token.txt"
    right.write_text(TOKEN + "\n")
    monkeypatch.setenv("MOODWIRE_USER", "bob")
    assert main(["rollback", "--credential-file", str(right)]) == 0
    assert last_json(capsys.readouterr().out)["serving"] == "v2"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    monkeypatch.setattr(getpass, "getpass", lambda prompt: prompts.append(prompt) or TOKEN)
    assert main(["retrain", "--user", "cy", "--reason", "drift"]) == 0
    assert prompts == ["cy's Moodwire password: "]
    assert reg.serving() == "v2"
    assert [(r["actor"], r["action"]) for r in store.audit_rows() if r["action"] != "sign_in"] == [
        ("ann", "promote"),
        ("bob", "rollback"),
        ("cy", "retrain"),
    ]


def test_the_command_line_refuses_a_promotion_without_a_credential(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    for payload in "ab":
        reg.write_version(lambda d, p=payload: (d / "weights.txt").write_text(p), {})
    reg.promote("v1")
    env = {k: v for k, v in os.environ.items() if k != "MOODWIRE_CREDENTIAL"}
    env.update(MOODWIRE_USER="ann", MOODWIRE_REGISTRY=str(reg.root))
    env["MOODWIRE_DATA_DIR"] = str(tmp_path)
    res = moodwire_cli(["promote", "v2"], env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("moodwire promote: this action needs ann's password")
    assert reg.serving() == "v1" and not (tmp_path / "moodwire.db").exists()


def test_every_option_of_every_command_has_a_help_text() -> None:
    import argparse

    from moodwire.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help and action.dest != "help":
                missing.append(" ".join([*path, *(action.option_strings or [action.dest])]))

    walk(build_parser(), ["moodwire"])
    assert missing == []


def _options(parser: argparse.ArgumentParser, path: str = "moodwire"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_option_of_every_command_says_what_it_does() -> None:
    from moodwire.cli import build_parser

    seen = list(_options(build_parser()))
    assert len(seen) > 100
    silent = [f"{path} {a.option_strings or a.dest}" for path, a in seen if not a.help]
    assert silent == []


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from moodwire import __version__
    from moodwire.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"moodwire {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--data-dir", "/x/outer", "throughput"],
        ["bench", "throughput", "--data-dir", "/x/outer"],
        ["bench", "--data-dir", "/x/outer", "faults"],
        ["bench", "--data-dir", "/x/outer", "dashboard"],
    ],
)
def test_an_option_given_at_either_level_is_kept(argv: list[str]) -> None:
    from moodwire.cli import build_parser, settings_from_args

    settings = settings_from_args(build_parser().parse_args(argv))
    assert settings.data_dir == Path("/x/outer")


def test_the_inner_level_wins_when_an_option_is_given_at_both() -> None:
    from moodwire.cli import build_parser, settings_from_args

    argv = ["bench", "--device", "cpu", "--data-dir", "/x/a", "throughput", "--data-dir", "/x/b"]
    settings = settings_from_args(build_parser().parse_args(argv))
    assert (settings.data_dir, settings.device) == (Path("/x/b"), "cpu")


def test_bench_throughput_runs_the_peer_unless_told_not_to() -> None:
    from moodwire.cli import build_parser

    assert build_parser().parse_args(["bench", "throughput"]).peer is True
    assert build_parser().parse_args(["bench", "throughput", "--no-peer"]).peer is False
