"""`creditauth bench channels`: Ray's channels and the direct channel carry the same batches."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.baselines.ray_channels import CHANNELS, Figure, _Probe, check_answer, median_by_case, request_batch
from services.bench.channels import table
from services.runtime.channel import frames
from services.scoring import DecisionBatch


def test_probe_answers_a_batch_of_the_same_size_and_wrong_answers_are_caught() -> None:
    probe = _Probe()
    blob = b"".join(bytes(p) for p in frames.encode(request_batch(7)))
    out = probe.call(blob)
    check_answer(out, 7)  # the canned answer for 7 requests
    with pytest.raises(AssertionError):
        check_answer(out, 8)
    resp, _ = frames.decode(DecisionBatch, memoryview(out))
    rows = resp.rows.copy()
    rows["pd"] = 0.0
    bad = dataclasses.replace(resp, rows=rows)
    with pytest.raises(AssertionError):
        check_answer(bad, 7)


def test_table_reports_the_median_round_against_direct() -> None:
    figs = [
        Figure("direct", 1, r, 100, 0.1, p50, p50 * 2, 0.05) for r, p50 in enumerate([500.0, 700.0, 600.0])
    ] + [Figure("compiled", 1, r, 100, 0.05, p50, p50 * 2, 0.02) for r, p50 in enumerate([300.0, 200.0, 250.0])]
    best = median_by_case(figs)
    assert best[("direct", 1)].p50_us == 600.0 and best[("compiled", 1)].p50_us == 250.0
    text = table(figs)
    assert "0.42x" in text  # 250 / 600
    assert "1.00x" in text


def test_bench_channels_runs_every_channel_on_a_real_ray_cluster(tmp_path: Path) -> None:
    out = tmp_path / "channels.json"
    exe = Path(sys.executable).parent / "creditauth"
    proc = subprocess.run(
        [str(exe), "bench", "channels", "--calls", "5", "--rounds", "1", "--sizes", "1,3", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    # Every channel brought back the right answer (checked in the run) and was timed.
    assert {(r["channel"], r["batch"]) for r in rows} == {(c, n) for c in CHANNELS for n in (1, 3)}
    assert all(r["calls"] == 5 and r["p50_us"] > 0 and r["wall_s"] > 0 for r in rows)
    assert "compiled" in proc.stdout and "direct-inline" in proc.stdout
