"""The origin settings: keys from the environment or a file, handed to child processes,
never shown; the learner's allowed origins from either spelling."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from moodwire.settings import Settings
from stream.origins import Refused


def test_keys_from_env_and_file_reach_a_child_and_never_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_file = tmp_path / "origins.json"
    secrets_file.write_text(json.dumps({"labeller:acme": "file-key", "cli": "file-cli"}))
    monkeypatch.setenv("MOODWIRE_ORIGINS", json.dumps({"dashboard": "env-key", "cli": "env-cli"}))
    monkeypatch.setenv("MOODWIRE_ORIGINS_FILE", str(secrets_file))
    monkeypatch.setenv("MOODWIRE_LEARNER__LABEL_ORIGINS", "dashboard, labeller:acme")
    s = Settings()
    keys = {k: v.get_secret_value() for k, v in s.origin_keys().items()}
    assert keys == {"dashboard": "env-key", "cli": "file-cli", "labeller:acme": "file-key"}
    assert s.learner.label_origins == ("dashboard", "labeller:acme")
    assert "env-key" not in repr(s) and "file-key" not in repr(s.signer("labeller:acme"))
    # What a child process gets rebuilds the same settings.
    for name in list(os.environ):
        if name.startswith("MOODWIRE_"):
            monkeypatch.delenv(name)
    for name, value in s.to_env().items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.origin_keys().keys() == s.origin_keys().keys()
    assert child.learner.label_origins == s.learner.label_origins
    assert child.learner.control_origins == s.learner.control_origins
    # What the dashboard signs, the child learner's trust verifies.
    raw = s.signer("dashboard").sign_json({"item_id": "it-1", "label": "negative"})
    assert child.label_trust().verify(raw).origin == "dashboard"
    with pytest.raises(Refused, match="origin_not_allowed"):
        child.label_trust().verify(s.signer("cli").sign_json({"label": "negative"}))


def test_a_json_list_of_origins_works_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOODWIRE_LEARNER__CONTROL_ORIGINS", '["dashboard"]')
    assert Settings().learner.control_origins == ("dashboard",)


def test_no_key_means_no_signer_and_a_bad_file_or_name_says_what_to_fix(tmp_path: Path) -> None:
    assert Settings().signer("cli") is None
    bad = tmp_path / "origins.json"
    bad.write_text('["not", "an", "object"]')
    with pytest.raises(ValueError, match="expected a JSON object of origin names to keys"):
        Settings(origins_file=bad).origin_keys()
    with pytest.raises(ValueError, match="cannot read"):
        Settings(origins_file=tmp_path / "missing.json").origin_keys()
    with pytest.raises(ValidationError, match="origin names are letters"):
        Settings(origins={"two words": "k"})


def _operator(config: Any) -> Any:
    """A signed-in operator, so that only the missing origin key refuses the retrain."""
    from state.store import Store
    from stream import access

    store = Store(config.store_url)
    access.add_user(store, access.os_principal(), "ann", "operator", None, email="ann@t.test")
    return access.Principal("ann", "operator", "password")


def test_operations_refuse_a_retrain_they_cannot_sign(tmp_path: Path) -> None:
    from stream import operations
    from stream.errors import NotAllowed

    config = Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1").operations()
    with pytest.raises(NotAllowed, match="MOODWIRE_ORIGINS"):
        operations.request_retrain(config, by=_operator(config), reason="drift")
