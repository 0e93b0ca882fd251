"""Every fuzz target, briefly, in a subprocess: zero crashes (the long runs are in docs/security/fuzzing.md)."""

from __future__ import annotations

import pytest

from tests.fuzz.run import _parse, run, targets

SMOKE_RUNS = 20_000


@pytest.mark.parametrize("target", sorted(targets()))
def test_target_runs_without_a_crash(target: str) -> None:
    report = run(target, SMOKE_RUNS, timeout_s=600)
    assert report.ok, report.line() + "\n" + report.tail
    assert report.inputs >= SMOKE_RUNS


def test_the_driver_sees_a_crash_by_signal_and_by_report() -> None:
    """The parser of harness output: a killed harness or a reported crash is never a pass."""
    killed = _parse("x", "Done 10 runs in 0 second(s)", -11, 1.0)
    assert not killed.ok and killed.crashes == 1 and "SIGSEGV" in killed.line()
    reported = _parse("x", "target x: inputs 500 crashes 2 seconds 1.0", 1, 1.0)
    assert not reported.ok and (reported.inputs, reported.crashes) == (500, 2)
    libfuzzer = _parse("x", "==1== ERROR: libFuzzer: deadly signal\nTest unit written to ./crash-ab12", 77, 1.0)
    assert not libfuzzer.ok and libfuzzer.artifacts == ["./crash-ab12"]
    assert _parse("x", "Done 1000 runs in 2 second(s)", 0, 2.0).ok
