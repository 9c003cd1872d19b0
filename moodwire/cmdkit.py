"""What every command shares: the table of commands, the one-line user error, the JSON
result line, and the stop event that signals set.

``moodwire.cli`` parses the command line and looks the command up here;
``moodwire.commands`` registers each command with :func:`command`. Light: it imports
no training code, so ``moodwire stats`` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from learner.data import DataError
from learner.errors import MemoryFileError, ModelLoadError
from moodwire.settings import Settings
from state.registry import RegistryError
from stream.errors import BrokerError, ConfigFileError, KafkaSecurityError, NotAllowed

log = structlog.get_logger("moodwire")


class UserError(Exception):
    """A mistake the user can fix (bad file, unknown version, …): message, no traceback."""


# Errors that are the user's to fix: one clear line, no traceback. RegistryError covers
# VersionIntegrityError (a tampered or unverifiable version) and a malformed serving.json;
# ModelLoadError a version that does not load or fails its smoke batch.
USER_ERRORS = (
    UserError,
    DataError,
    RegistryError,
    ModelLoadError,
    BrokerError,
    KafkaSecurityError,
    FileNotFoundError,
    NotAllowed,
    ConfigFileError,
    MemoryFileError,
)


def print_json(obj: Any) -> None:
    """The one JSON object scripts read: the last line of stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}


def command(name: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    def register(fn: Callable[..., int]) -> Callable[..., int]:
        COMMANDS[name] = fn
        return fn

    return register


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM, SIGINT (Ctrl-C) or SIGHUP (its terminal closed), with the
    old handlers restored after. SIGHUP is left alone where it is ignored (``nohup``)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def guard(fn: Callable[[argparse.Namespace, Settings], int]) -> Callable[..., int]:
    """Turn the user's mistakes (:data:`USER_ERRORS`) into a :class:`UserError`: one line."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return fn(args, settings)
        except USER_ERRORS as exc:
            raise UserError(str(exc).strip("'\"")) from exc

    return run
