"""The privacy settings: off by default, handed to child processes, regions checked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moodwire.settings import Settings


def test_masking_is_off_by_default_and_travels_to_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().masker() is None and Settings().worker().masker is None
    parent = Settings(mask_personal_data=True, mask_phone_regions="us, de")
    env = parent.to_env()
    assert env["MOODWIRE_MASK_PERSONAL_DATA"] == "true"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    masker = child.worker().masker
    assert masker is not None and masker.phone_regions == ("US", "DE")
    assert masker.mask("Ruf an: 030 12345678") == "Ruf an: [PHONE]"


def test_an_unknown_phone_region_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="unknown phone region"):
        Settings(mask_phone_regions="US,XX")
