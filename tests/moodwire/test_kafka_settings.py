"""The ``kafka`` settings block, unknown variables, ``.env`` and the secrets directory, and
secrets kept out of reprs, errors, ``--help`` and logs."""

from __future__ import annotations

import json
import logging
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, clean_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from moodwire.cli import build_parser
from moodwire.cmdkit import COMMANDS
from moodwire.settings import Settings, setting_names, unknown_variables
from stream.clients import connection_kwargs
from stream.config import KafkaSecurity

SASL_PASSWORD = "sasl-Pw-9f3b1c"
DB_PASSWORD = "db-Pw-77aa01"
ORIGIN_KEY = "origin-Key-5e5e5e"
HOOK_TOKEN = "hook-Tok-3c3c3c"
SECRETS = (SASL_PASSWORD, DB_PASSWORD, ORIGIN_KEY, HOOK_TOKEN)


@pytest.fixture
def no_moodwire_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("MOODWIRE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    return tmp_path


def _secured_env() -> dict[str, str]:
    return {
        "MOODWIRE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "MOODWIRE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "MOODWIRE_KAFKA__SASL_USERNAME": "moodwire-worker",
        "MOODWIRE_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
        "MOODWIRE_KAFKA__CLIENT_ID": "acme-risk",
        "MOODWIRE_KAFKA__AUTO_OFFSET_RESET": "latest",
        "MOODWIRE_KAFKA__REPLICATION_FACTOR": "3",
        "MOODWIRE_KAFKA__CREATE_TOPICS": "false",
        "MOODWIRE_STORE_URL": f"postgresql+psycopg://moodwire:{DB_PASSWORD}@db/moodwire",
        "MOODWIRE_REGISTRY_URL": f"postgresql+psycopg://registry:{DB_PASSWORD}@db/moodwire",
        "MOODWIRE_ORIGINS": json.dumps({"dashboard": ORIGIN_KEY}),
        "MOODWIRE_WEBHOOK_URL": f"https://hooks.example.test/{HOOK_TOKEN}",
        "MOODWIRE_NOTIFY": json.dumps([{"url": f"jsons://alerts.example.test/hook/{HOOK_TOKEN}"}]),
    }


def test_the_kafka_block_reaches_every_client(
    monkeypatch: pytest.MonkeyPatch, no_moodwire_env: Path
) -> None:
    for k, v in _secured_env().items():
        monkeypatch.setenv(k, v)
    s = Settings()
    kafka = s.kafka_config()
    kw = connection_kwargs(kafka)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "moodwire-worker"
    assert kw["sasl_plain_password"] == SASL_PASSWORD and kw["ssl_check_hostname"] is True
    assert kafka.security.replication_factor == 3 and kafka.security.create_topics is False
    assert s.operations().kafka == kafka  # the dashboard's and CLI's actions use it too
    # A child process (the demo's, a bench's) gets the same block back.
    for name in list(os.environ):
        if name.startswith("MOODWIRE_"):
            monkeypatch.delenv(name)
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    assert Settings().kafka == s.kafka


def test_a_removed_setting_says_what_replaced_it(
    monkeypatch: pytest.MonkeyPatch, no_moodwire_env: Path
) -> None:
    monkeypatch.setenv("MOODWIRE_OPERATOR_TOKEN", "t0ken")
    with pytest.raises(ValidationError, match="moodwire users add"):
        Settings()


def test_an_unknown_moodwire_variable_is_an_error_naming_the_right_one(
    monkeypatch: pytest.MonkeyPatch, no_moodwire_env: Path
) -> None:
    monkeypatch.setenv("MOODWIRE_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="did you mean MOODWIRE_KAFKA__SECURITY_PROTOCOL"):
        Settings()


def test_an_unknown_name_in_dotenv_is_an_error_too(no_moodwire_env: Path) -> None:
    (no_moodwire_env / ".env").write_text("MOODWIRE_BATCH_SIZ=12\n")
    with pytest.raises(ValidationError, match=r"\.env: MOODWIRE_BATCH_SIZ is not a Moodwire"):
        Settings()


names = st.text(string.ascii_uppercase + string.digits + "_", min_size=1, max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
def test_every_variable_is_either_a_setting_or_refused(name: str) -> None:
    full = f"MOODWIRE_{name}"
    if full in setting_names():
        unknown_variables({full: "x"})
    else:
        with pytest.raises(ValueError, match=f"{full} is not a Moodwire setting"):
            unknown_variables({full: "x"})
    if not name.startswith("MOODWIRE_"):
        unknown_variables({name: "x"})  # not ours: never refused


def test_dotenv_and_the_secrets_directory_are_read(
    monkeypatch: pytest.MonkeyPatch, no_moodwire_env: Path
) -> None:
    (no_moodwire_env / ".env").write_text(
        "MOODWIRE_KAFKA__SECURITY_PROTOCOL=SASL_PLAINTEXT\n"
        "MOODWIRE_KAFKA__SASL_MECHANISM=PLAIN\nMOODWIRE_KAFKA__SASL_USERNAME=u\n"
    )
    secrets = no_moodwire_env / "secrets"
    secrets.mkdir()
    (secrets / "moodwire_kafka__sasl_password").write_text(SASL_PASSWORD)
    (secrets / "moodwire_store_url").write_text(f"postgresql://u:{DB_PASSWORD}@h/d")
    monkeypatch.setenv("MOODWIRE_SECRETS_DIR", str(secrets))
    s = Settings()
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == SASL_PASSWORD
    assert DB_PASSWORD in s.resolved_store_url()
    monkeypatch.setenv("MOODWIRE_SECRETS_DIR", str(secrets / "missing"))
    with pytest.raises(ValueError, match="MOODWIRE_SECRETS_DIR"):
        Settings()


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"security_protocol": "SASL_SSL"}, "SASL_MECHANISM"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "SASL_USERNAME"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "TOKEN_FILE"),
        ({"sasl_username": "u"}, "SECURITY_PROTOCOL is PLAINTEXT"),
        ({"security_protocol": "SSL", "ssl_certfile": "/etc/hostname"}, "SSL_KEYFILE"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "no such file"),
        ({"ssl_cafile": "/etc/hostname"}, "use SSL or SASL_SSL"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"replication_factor": 0}, "replication_factor"),
    ],
)
def test_inconsistent_security_settings_are_refused(given: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        KafkaSecurity(**given)


def test_no_secret_in_reprs_or_settings_errors(
    monkeypatch: pytest.MonkeyPatch, no_moodwire_env: Path
) -> None:
    for k, v in _secured_env().items():
        monkeypatch.setenv(k, v)
    s = Settings()
    shown = [repr(s), str(s), repr(s.kafka_config()), repr(s.operations()), s.model_dump_json()]
    for text in shown:
        for secret in SECRETS:
            assert secret not in text
    # A bad value elsewhere: the error names settings, never echoes their values.
    monkeypatch.setenv("MOODWIRE_KAFKA__SECURITY_PROTOCOL", "SASL_SSLX")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert all(secret not in str(info.value) for secret in SECRETS)


def test_no_secret_in_any_commands_help(tmp_path: Path) -> None:
    env = clean_env(tmp_path) | _secured_env()
    parser = build_parser()
    assert COMMANDS or parser  # the table is filled by importing moodwire.commands below
    out = subprocess.run(
        [sys.executable, "-c", _HELP_ALL], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    pages = json.loads(out.stdout)
    assert len(pages) >= 10  # every command's page was rendered
    for page in pages.values():
        assert all(secret not in page for secret in SECRETS)


_HELP_ALL = """
import argparse, contextlib, io, json
from moodwire.cli import build_parser
parser = build_parser()
pages = {"": parser.format_help()}
for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
        for name, sub in action.choices.items():
            pages[name] = sub.format_help()
            for inner in sub._actions:
                if isinstance(inner, argparse._SubParsersAction):
                    for n2, s2 in inner.choices.items():
                        pages[name + " " + n2] = s2.format_help()
print(json.dumps(pages))
"""


def test_kafka_pythons_configuration_dump_never_reaches_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kafka.admin import client as admin_client

    with caplog.at_level(logging.DEBUG, logger="kafka"):
        admin_client.log.debug(
            "Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": "x1y2"}
        )
        admin_client.log.debug("an ordinary line")
    assert "x1y2" not in caplog.text and "an ordinary line" in caplog.text


# What pydantic reads as a boolean (any case, no surrounding space), and nothing else.
_BOOLS = dict.fromkeys(("1", "t", "true", "y", "yes", "on"), True)
_BOOLS |= dict.fromkeys(("0", "f", "false", "n", "no", "off"), False)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(
        st.sampled_from(sorted(_BOOLS)).map(str.upper),
        st.sampled_from(sorted(_BOOLS)).map(lambda v: f" {v}"),
        st.text(max_size=12),
    )
)
def test_any_text_for_the_learners_blending_switch_is_a_boolean_or_an_error_naming_it(
    no_moodwire_env: Path, value: str
) -> None:
    value = value.replace("\x00", "")  # an environment variable cannot hold NUL
    os.environ["MOODWIRE_LEARNER__MERGE"] = value
    try:
        expected = _BOOLS.get(value.lower())
        if expected is None:
            with pytest.raises(ValidationError, match="merge"):
                Settings()
        else:
            assert Settings().learner.merge is expected
    finally:
        del os.environ["MOODWIRE_LEARNER__MERGE"]
