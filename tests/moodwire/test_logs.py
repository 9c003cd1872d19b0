"""Standard-library log records come out as the same JSON lines, with the bound context."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import structlog

from moodwire.logs import QUIET_LIBRARIES, configure_logging
from stream.observability import batch_context


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_a_kafka_warning_is_one_json_line_with_the_batch_context() -> None:
    out = _Pipe()
    configure_logging("info", "json", stream=out)
    try:
        records = [
            SimpleNamespace(topic="news", partition=p, offset=o) for p, o in ((2, 7), (2, 9))
        ]
        with batch_context("worker:h-1", records, "v3"):
            logging.getLogger("kafka.conn").warning("broker %s gone", "b1")
            structlog.get_logger("x").info("batch_done", n=2)
        logging.getLogger("kafka").info("chatty")  # held at WARNING
        logging.getLogger("sqlalchemy.engine").info("SELECT 1")
        lines = out.getvalue().splitlines()
        assert len(lines) == 2, lines
        kafka, ours = (json.loads(line) for line in lines)
        assert kafka["event"] == "broker b1 gone" and kafka["level"] == "warning"
        assert kafka["logger"] == "kafka.conn" and "timestamp" in kafka
        for line in (kafka, ours):
            assert line["worker"] == "worker:h-1" and line["model_version"] == "v3"
            assert line["partitions"] == ["news:2"] and line["offsets"] == {"news:2": [7, 9]}
        assert all(logging.getLogger(n).level == logging.WARNING for n in QUIET_LIBRARIES)
        # Outside the batch the context is gone.
        logging.getLogger("urllib3").error("after")
        assert "worker" not in json.loads(out.getvalue().splitlines()[-1])
    finally:
        configure_logging("info", "json")  # back to stderr for the other tests
