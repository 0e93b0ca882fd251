"""Process logs as JSON lines carrying the current trace; callers' trace contexts checked before use."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services import logs
from services.settings import TelemetrySettings
from services.telemetry import NullTelemetry, Telemetry


@pytest.fixture()
def root_handlers() -> Iterator[None]:
    """configure() replaces the root logger's handlers: give pytest's back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_carry_the_current_span(root_handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetrySettings(trace_sample_ratio=1.0), "test", [SimpleSpanProcessor(exporter)])
    logs.configure(logging.INFO, "json")
    log = logging.getLogger("creditauth.test")
    log.info("outside any span")
    with tel.span("work"):
        log.warning("inside %s", "a span")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    outside, inside, failed = _lines(capsys.readouterr().err)
    span = exporter.get_finished_spans()[0].context
    assert "trace_id" not in outside and outside["message"] == "outside any span"
    assert inside["message"] == "inside a span" and inside["level"] == "WARNING"
    assert inside["logger"] == "creditauth.test"
    assert inside["trace_id"] == f"{span.trace_id:032x}" and inside["span_id"] == f"{span.span_id:016x}"
    assert "ValueError: boom" in str(failed["exception"])
    tel.shutdown()


def test_switching_format_does_not_double_lines(root_handlers: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(logging.WARNING, "text")
    logs.configure(logging.WARNING, "json")
    logging.getLogger("creditauth.test").warning("once")
    assert len(_lines(capsys.readouterr().err)) == 1


CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_callers_trace_context_is_continued_only_when_valid_and_sampled() -> None:
    exporter = InMemorySpanExporter()
    # Nothing sampled locally: the caller's own sampling decision is what continues a trace.
    tel = Telemetry(TelemetrySettings(trace_sample_ratio=0.0), "test", [SimpleSpanProcessor(exporter)])
    assert tel.continues(CALLER)
    for bad in (None, "", CALLER[:-2] + "00", "01" + CALLER[2:], CALLER.replace("4bf9", "zzzz"),
                "00-" + "0" * 32 + "-00f067aa0ba902b7-01", CALLER + "-extra", "x" * 10_000):
        assert not tel.continues(bad), bad
    with tel.span("Authorize", parent=CALLER):
        pass
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == CALLER.split("-")[1], "the caller's trace goes on"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER.split("-")[2]
    assert not NullTelemetry().continues(CALLER)
    tel.shutdown()
