"""`creditauth bench serving`: rounds are interleaved and the median round is reported."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from services.bench import serving


def _result(rate: float) -> dict[str, Any]:
    lat = {"p50": 1.0, "p99": 2.0, "p99.9": 3.0}
    return {"runs": [{"mode": "unary", "decisions": 10, "decisions_per_s": rate, "errors": 0, "latency_ms": lat}]}


def test_rounds_interleave_targets_and_report_the_median(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    rates = {"ceiling (echo)": iter([1000.0, 3000.0, 2000.0]), "creditauth (direct)": iter([500.0, 100.0, 900.0])}

    def fake_run(t: serving.Target, port: int, args: argparse.Namespace) -> dict[str, Any]:
        calls.append(t.name)
        return _result(next(rates[t.name]))

    monkeypatch.setattr(serving, "_run_target", fake_run)
    args = argparse.Namespace(
        data_dir="/nowhere", online_store=None, channels=["direct"], telemetry_cost=False, skip_naive=True, rounds=3
    )
    rows = serving.run(args)
    assert calls == ["ceiling (echo)", "creditauth (direct)"] * 3
    by_target = {r["target"]: r for r in rows}
    assert by_target["ceiling (echo)"]["decisions_per_s"] == 2000.0
    assert by_target["creditauth (direct)"]["decisions_per_s"] == 500.0
    assert by_target["creditauth (direct)"]["rounds"] == [500, 100, 900]
    text = serving.table(rows)
    assert "0.25x" in text  # 500 / 2000, median against median
    assert "500 / 100 / 900" in text
