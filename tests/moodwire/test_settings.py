from __future__ import annotations

import pytest
from pydantic import ValidationError

from moodwire.settings import Settings


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MOODWIRE_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("MOODWIRE_TOPICS__NEWS", "wire")
    monkeypatch.setenv("MOODWIRE_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.bootstrap_servers == "kafka:9092" and s.topics.news == "wire"
    assert s.resolved_store_url() == f"sqlite:///{tmp_path.resolve() / 'moodwire.db'}"
    t = s.with_overrides(bootstrap_servers="127.0.0.1:1", registry=None)
    assert t.bootstrap_servers == "127.0.0.1:1" and t.topics.news == "wire"


def test_the_sign_in_lock_out_reaches_the_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOODWIRE_ACCESS__MAX_FAILURES", "3")
    s = Settings()
    assert s.operations().sign_in.max_failures == 3
    assert s.to_env()["MOODWIRE_ACCESS__MAX_FAILURES"] == "3"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOODWIRE_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(ValidationError):
        Settings(batch_size=8, bootstrap_servers=" ")


def test_a_lock_out_of_zero_failures_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOODWIRE_ACCESS__MAX_FAILURES", "0")
    with pytest.raises(ValidationError):
        Settings()
