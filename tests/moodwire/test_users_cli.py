"""``moodwire users``: add, list, set-role, passwd and remove, audited as the OS login."""

from __future__ import annotations

import getpass
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from helpers import last_json

from moodwire.cli import main
from state.store import Store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    monkeypatch.setenv("MOODWIRE_STORE_URL", url)
    monkeypatch.setenv("MOODWIRE_DATA_DIR", str(tmp_path))
    logging = structlog.get_config()
    yield Store(url)
    structlog.configure(**logging)


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_users_are_added_listed_changed_and_removed_audited_as_the_os_login(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stdin(monkeypatch, "a long enough password\n")
    assert main(["users", "add", "Ann", "--role", "analyst", "--password-stdin"]) == 0
    assert last_json(capsys.readouterr().out) == {"user": "ann", "role": "analyst", "email": None}
    assert main(["users", "set-role", "ann", "operator"]) == 0
    _stdin(monkeypatch, "another long password\n")
    assert main(["users", "passwd", "ann", "--password-stdin"]) == 0
    capsys.readouterr()
    assert main(["users", "list"]) == 0
    out = capsys.readouterr().out
    assert [(u["user"], u["role"]) for u in last_json(out)] == [("ann", "operator")]
    assert "argon2" not in out and "password" not in out
    assert main(["users", "remove", "ann"]) == 0
    assert store.users() == []
    login = f"os:{getpass.getuser()}"
    assert [(r["actor"], r["action"], r["target"]) for r in store.audit_rows()] == [
        (login, "user_add", "ann"),
        (login, "user_set_role", "ann"),
        (login, "user_set_password", "ann"),
        (login, "user_remove", "ann"),
    ]
    assert "long" not in str(store.audit_rows())


@pytest.mark.parametrize(
    ("argv", "stdin", "words"),
    [
        (["users", "add", "bob", "--role", "viewer", "--password-stdin"], "short\n",
         "a password needs at least 12 characters (this one has 5)"),
        (["users", "add", "bob", "--role", "viewer", "--password-stdin"], "",
         "standard input is empty"),
        (["users", "add", "bob", "--role", "viewer"], "",
         "no terminal to ask for the password on: pass it with --password-stdin"),
        (["users", "add", "b b", "--role", "viewer", "--password-stdin"], "x" * 20 + "\n",
         "a user name has letters, digits and . _ - @ only"),
        (["users", "add", "bob", "--role", "viewer", "--no-password"], "",
         "--no-password needs --email"),
        (["users", "remove", "nobody"], "", "no user 'nobody'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_changes_nothing(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str,
    words: str,
) -> None:
    _stdin(monkeypatch, stdin)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert store.users() == [] and store.audit_rows() == []


def test_a_password_is_never_an_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["users", "add", "bob", "--role", "viewer", "--password", "in-the-shell-history"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_a_prompted_password_is_asked_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(""))
    answers = iter(["first long password", "second long password"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt: next(answers))
    assert main(["users", "add", "cy", "--role", "viewer"]) == 2
    assert "the two passwords differ" in capsys.readouterr().err
    answers = iter(["same long password", "same long password"])
    assert main(["users", "add", "cy", "--role", "viewer"]) == 0
    assert [u["name"] for u in store.users()] == ["cy"]
