"""structlog set-up: JSON lines when stderr is not a terminal, readable ones when it is.

Logs go to stderr so that commands whose last stdout line is JSON stay parseable.
The standard library's loggers (kafka-python, SQLAlchemy, transformers, urllib3, …)
go through the same renderer (structlog's ``ProcessorFormatter``), so a log is one
format throughout, and every line carries the context bound with
``structlog.contextvars`` (a worker's batch: worker, partitions, offsets, model
version). Those libraries are held at WARNING by default.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Chatty at INFO (a line per connection, per pool checkout, per download attempt).
QUIET_LIBRARIES = ("kafka", "sqlalchemy", "transformers", "urllib3", "filelock", "httpx")
_HANDLER_NAME = "moodwire"


def configure_logging(level: str = "info", fmt: str = "auto", *, stream: Any = None) -> None:
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # The standard library's records: rendered as structlog renders its own.
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))  # other libraries: their warnings only
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
