"""Refusing a bad configuration file (watch list, taxonomy) in one clear line.

:class:`ConfigFileError` is the one error a bad file raises; its message names
the file and the entry or line. :func:`read_config_text` and :func:`load_yaml`
are the guarded reading every config loader shares, so that no file can make
us read without bound, recurse, expand aliases ("billion laughs") or build
objects from tags.

>>> load_yaml("- {ticker: ACME, name: Acme Corp}\\n", "w.yaml")
[{'ticker': 'ACME', 'name': 'Acme Corp'}]
>>> load_yaml("a: &x [1]\\nb: *x\\n", "w.yaml")
Traceback (most recent call last):
...
stream.errors.ConfigFileError: w.yaml: line 2, column 4: YAML aliases (*x) are not allowed; write the value out
>>> load_yaml("- !!python/object:os.system x\\n", "w.yaml")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
stream.errors.ConfigFileError: w.yaml: line 1, column 3: YAML tag '!!python/object:os.system' ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Both config files nest three or four levels deep; this leaves room and stops
# "[[[[..." long before the composer's recursion could.
MAX_YAML_DEPTH = 32
# PyYAML holds every node with its marks (a few hundred bytes each): 4 MiB of
# "[a,a,a,..." took 750 MB and 30 s. Config files have a few thousand nodes.
MAX_YAML_NODES = 100_000
# Explicit tags that only say what plain YAML already says; every other tag
# (!!python/..., and !!int/!!timestamp/!!bool, whose constructors crash on bad
# values) is refused.
_ALLOWED_TAGS = frozenset(
    {"!", "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigFileError(ValueError):
    """A watch-list or taxonomy file is unusable; the message says where and why, in one line."""


def shown(value: object, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters, safe to put in a one-line message.

    >>> shown("x" * 100, limit=10)
    "'xxxxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_config_text(path: Path, what: str, max_bytes: int) -> str:
    """The text of a UTF-8 file (a byte-order mark dropped), refused above ``max_bytes``."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
    if len(data) > max_bytes:
        raise ConfigFileError(
            f"{path}: larger than {max_bytes // 1024} KiB; a {what} this big is refused"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8"
        ) from exc


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


def _check_events(text: str, source: object) -> None:
    """Refuse aliases, tags, deep nesting, too many nodes and unstorable scalars
    before anything is built.

    The event stream is produced without recursion (libyaml or PyYAML's parser
    both keep an explicit stack) and one event at a time, so this pass is safe
    on any input.
    """
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_SAFE_LOADER):
        where = f"{source}: {_at(event.start_mark)}"
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise ConfigFileError(
                    f"{where}: more than {MAX_YAML_NODES:,} YAML values; a file this big is refused"
                )
        if isinstance(event, yaml.AliasEvent):
            raise ConfigFileError(
                f"{where}: YAML aliases (*{event.anchor}) are not allowed; write the value out"
            )
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _ALLOWED_TAGS:
            written = tag.replace("tag:yaml.org,2002:", "!!", 1)
            raise ConfigFileError(
                f"{where}: YAML tag {shown(written)} is not allowed; write plain values"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigFileError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and not event.value.isascii():
            try:
                event.value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigFileError(
                    f"{where}: an escape gives half of a UTF-16 surrogate pair; "
                    "write the character itself"
                ) from None


def load_yaml(text: str, source: object) -> Any:
    """Plain YAML data (lists, mappings, strings, numbers, booleans, null) from ``text``.

    Errors are :class:`ConfigFileError` naming ``source`` and the line.
    """
    try:
        _check_events(text, source)
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader, checked above
    except ConfigFileError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        raise ConfigFileError(f"{source}: invalid YAML at {_at(mark)}: {problem}") from exc
    except yaml.YAMLError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise ConfigFileError(f"{source}: invalid YAML: {first_line}") from exc
    except ValueError as exc:
        # A plain value the resolver took for a date or number that cannot be one
        # (2001-13-45, 0x_, an integer of 5,000 digits).
        raise ConfigFileError(f"{source}: invalid YAML value: {exc}") from exc


def load_yaml_list(path: Path, key: str, items: str, what: str, max_bytes: int) -> list[Any]:
    """The list a YAML config file holds: at the top level, or under ``key`` in a mapping.

    ``items`` names the entries in messages ("entries", "topics"), ``what`` the
    file ("watch list"); a file above ``max_bytes`` is refused unread.
    """
    data = load_yaml(read_config_text(path, what, max_bytes), path)
    if isinstance(data, dict):
        if key not in data:
            raise ConfigFileError(f"{path}: expected a list or a mapping with key {key!r}")
        data = data[key]
    if not isinstance(data, list):
        raise ConfigFileError(f"{path}: expected a list of {items}, got {type(data).__name__}")
    return data


class BrokerError(RuntimeError):
    """The broker could not be started or reached."""


class KafkaSecurityError(RuntimeError):
    """The TLS handshake or the authentication with Kafka failed: fix the settings, not a wait."""


class NotAllowed(PermissionError):
    """A state-changing action without a valid operator credential."""


class Stopping(Exception):
    """The process was asked to stop while a step was being retried."""
