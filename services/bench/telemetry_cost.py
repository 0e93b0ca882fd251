"""``creditauth bench telemetry``: what telemetry costs on the request path, per call.

End-to-end on/off comparisons (``bench serving --telemetry-cost``) cannot resolve a few
percent on a noisy 2-core VM, so this times the calls the front end makes, in process,
side by side in one run: with telemetry off (``NullTelemetry``), with every RPC's
latency recorded, and at the configured settings (defaults unless ``--config``).

Per unary RPC: the trace-sampling draw (and the sampled share of spans), the RPC count
and latency, the outcome count. Per backend call: batch size and duration and the
replica's stage timings (what ``Batcher`` records).
"""

from __future__ import annotations

import argparse
import time

from services.scoring.stages import STAGES
from services.settings import Settings, TelemetrySettings
from services.telemetry import NullTelemetry, setup


def _per_rpc(tel: NullTelemetry, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        if tel.sampled():
            with tel.span("Authorize"):
                pass
        tel.rpc("Authorize", "OK", 0.001)
        tel.outcome(0, 1)
    return (time.perf_counter() - t0) / n


def _per_call(tel: NullTelemetry, n: int) -> float:
    stage_s = dict.fromkeys(STAGES, 0.0005)
    t0 = time.perf_counter()
    for _ in range(n):
        tel.batch(8, 0.002, stage_s)
    return (time.perf_counter() - t0) / n


def run(settings: TelemetrySettings, n: int, rounds: int) -> list[tuple[str, float, float]]:
    variants: list[tuple[str, NullTelemetry]] = [
        ("off (NullTelemetry)", NullTelemetry()),
        ("every RPC's latency recorded", setup(settings.model_copy(update={"histogram_sample_every": 1}), "bench")),
        (f"configured (1 in {settings.histogram_sample_every})", setup(settings, "bench")),
    ]
    best = {label: [float("inf"), float("inf")] for label, _ in variants}
    for _ in range(rounds):  # interleaved; the best round counts
        for label, tel in variants:
            best[label][0] = min(best[label][0], _per_rpc(tel, n))
            best[label][1] = min(best[label][1], _per_call(tel, n // 4))
    for _, tel in variants:
        tel.shutdown()
    return [(label, rpc, call) for label, (rpc, call) in best.items()]


def main(settings: Settings, args: argparse.Namespace) -> None:
    tel_settings = settings.telemetry.model_copy(update={"enabled": True, "prometheus_port": 0})
    rows = run(tel_settings, args.calls, args.rounds)
    print(f"telemetry cost per call, best of {args.rounds} interleaved rounds of {args.calls:,} calls")
    print(f"trace_sample_ratio {tel_settings.trace_sample_ratio}, otlp {tel_settings.otlp_endpoint or 'off'}\n")
    print(f"{'variant':<32} {'per unary RPC us':>17} {'per backend call us':>20}")
    for label, rpc, call in rows:
        print(f"{label:<32} {rpc * 1e6:>17.2f} {call * 1e6:>20.2f}")
