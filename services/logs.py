"""Process logs: plain text for a terminal, or one JSON object per line for a log pipeline.

JSON lines carry the trace and span ids of the span current when the record was made
(OpenTelemetry's context), so a log line is found from its trace and the other way round.
Configured once per process by its entry point (the CLI, a replica at start-up) from
``telemetry.log_format``. Identifiers of merchants and applications are never logged (the
decision log holds them, keyed), so nothing here needs redacting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Literal

from opentelemetry import trace

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ["trace_id", "span_id", "trace_flags"], ["exception"]}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = f"{ctx.trace_id:032x}"
            out["span_id"] = f"{ctx.span_id:016x}"
            out["trace_flags"] = f"{int(ctx.trace_flags):02x}"
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: int, fmt: LogFormat = "text") -> None:
    """The root logger's one handler (stderr), replacing any earlier one: called again once
    the settings are known, it switches the format without doubling lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
