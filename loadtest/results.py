"""A campaign's results against one target: merged slices, phase summaries, SLO gates.

Slices arrive from every generator process once a second; they are merged
per phase and per second by adding histograms, so every percentile reported
is a percentile of all requests, never an average of per-process percentiles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from loadtest.campaign import Campaign, Phase
from loadtest.tally import Interval, encode_histogram, percentiles_ms

# A generator that sends later than this (p99, per RPC) is itself a bottleneck:
# its numbers then describe the generator as much as the system.
GENERATOR_LAG_WARN_MS = 50.0


@dataclass
class TargetRun:
    label: str
    target: str
    campaign: Campaign
    started_at: float = 0.0  # wall clock of the campaign's t = 0
    status: str = "pending"  # complete | interrupted | failed
    failure: str = ""
    phases: list[Interval] = field(default_factory=list)
    seconds: dict[int, Interval] = field(default_factory=dict)
    inflight: dict[int, dict[int, int]] = field(default_factory=dict)  # second -> worker -> gauge
    reporting: set[int] = field(default_factory=set)  # generators whose slices arrived

    def __post_init__(self) -> None:
        if not self.phases:
            self.phases = [Interval() for _ in self.campaign.phases]

    def absorb(self, worker: int, payload: dict[str, Any]) -> None:
        """Merge one ``tick`` from a generator (see ``Engine.flush``)."""
        self.reporting.add(worker)
        for phase, sec, wire in payload["buckets"]:
            iv = Interval.from_wire(wire)
            self.phases[phase].add(iv)
            self.seconds.setdefault(sec, Interval()).add(iv)
        # Ticks come just after a second ends: the gauge belongs to the second before.
        sec = max(0, int(float(payload.get("at", 0.0)) + 0.5) - 1)
        self.inflight.setdefault(sec, {})[worker] = int(payload.get("inflight", 0))

    def phase_at(self, second: float) -> int | None:
        """Index of the phase scheduled at ``second`` (None during the final drain)."""
        for i, start in enumerate(self.campaign.phase_starts()):
            if start <= second < start + self.campaign.phases[i].duration:
                return i
        return None

    def total(self) -> Interval:
        out = Interval()
        for iv in self.phases:
            out.add(iv)
        return out


@dataclass(frozen=True)
class GateCheck:
    target: str
    phase: str
    measure: str
    limit: float
    actual: float | None
    passed: bool

    def describe(self) -> str:
        op = ">=" if self.measure == "min_throughput" else "<="
        got = "n/a" if self.actual is None else f"{self.actual:,.4g}"
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.target}/{self.phase}: {self.measure} {got} {op} {self.limit:,.4g}"


def phase_summary(run: TargetRun, index: int) -> dict[str, Any]:
    ph = run.campaign.phases[index]
    iv = run.phases[index]
    start = run.campaign.phase_starts()[index]
    lag = percentiles_ms(iv.lag)
    late = bool(lag) and lag["p99"] > GENERATOR_LAG_WARN_MS
    # Late sends have two causes: the in-flight cap was full (the target is not
    # keeping up: a finding about the target) or the generator ran out of CPU
    # (a finding about the test: add processes or lower the rate).
    capped = iv.capped > 0.01 * max(iv.rpcs, 1)
    return {
        "name": ph.name,
        "mode": ph.mode,
        "rpc": ph.rpc,
        "batch_size": ph.batch_size if ph.rpc == "batch" else None,
        "start_s": start,
        "duration_s": ph.duration,
        "gated": ph.gate and not ph.slo.is_empty(),
        "planned_rate": None if ph.offered_rate is None else round(ph.offered_rate, 1),
        "offered": iv.offered,
        "sent": iv.sent,
        "rpcs": iv.rpcs,
        "answered": iv.answered,
        "decided": iv.ok,
        "rejected_as_expected": iv.rejected,
        "degraded": iv.degraded,
        "errors": dict(sorted(iv.errors.items())),
        "error_count": iv.error_count,
        "error_rate": round(iv.error_count / iv.offered, 6) if iv.offered else 0.0,
        "throughput": round(iv.answered / ph.duration, 1) if ph.duration else 0.0,
        "outcomes": dict(sorted(iv.outcomes.items())),
        "latency_ms": percentiles_ms(iv.latency),
        "service_ms": percentiles_ms(iv.service),
        "send_lag_ms": lag,
        "in_flight_capped": iv.capped,
        "late_sends": "in_flight_cap" if late and capped else "generator" if late else None,
        "histogram": encode_histogram(iv.latency) if iv.latency.get_total_count() else None,
    }


def _latency(summary: dict[str, Any], key: str) -> float | None:
    v = summary["latency_ms"].get(key)
    return None if v is None else float(v)


def evaluate_gates(run: TargetRun) -> list[GateCheck]:
    """Every SLO of every gated phase against what was measured."""
    checks: list[GateCheck] = []
    for i, ph in enumerate(run.campaign.phases):
        if not ph.gate or ph.slo.is_empty():
            continue
        s = phase_summary(run, i)
        checks.extend(_phase_checks(run.label, ph, s))
    return checks


def _phase_checks(label: str, ph: Phase, s: dict[str, Any]) -> list[GateCheck]:
    out = []
    for measure, key in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        limit = getattr(ph.slo, measure)
        if limit is not None:
            actual = _latency(s, key)
            # A phase with no answers at all has no latency to meet its SLO with.
            out.append(GateCheck(label, ph.name, measure, limit, actual, actual is not None and actual <= limit))
    if ph.slo.max_error_rate is not None:
        actual = float(s["error_rate"]) if s["offered"] else None
        ok = actual is not None and actual <= ph.slo.max_error_rate
        out.append(GateCheck(label, ph.name, "max_error_rate", ph.slo.max_error_rate, actual, ok))
    if ph.slo.min_throughput is not None:
        actual = float(s["throughput"])
        out.append(GateCheck(label, ph.name, "min_throughput", ph.slo.min_throughput, actual,
                             actual >= ph.slo.min_throughput))
    return out


def seconds_series(run: TargetRun) -> list[dict[str, Any]]:
    """One row per second of the run: rates, errors and latency percentiles of that second."""
    rows = []
    last = max(run.seconds, default=-1)
    for sec in range(last + 1):
        iv = run.seconds.get(sec, Interval())
        pct = percentiles_ms(iv.latency)
        phase = run.phase_at(sec)
        rows.append({
            "t": sec,
            "phase": run.campaign.phases[phase].name if phase is not None else "drain",
            "offered": iv.offered,
            "sent": iv.sent,
            "answered": iv.answered,
            "errors": iv.error_count,
            "p50_ms": pct.get("p50"),
            "p90_ms": pct.get("p90"),
            "p99_ms": pct.get("p99"),
            "p999_ms": pct.get("p99.9"),
            "max_ms": pct.get("max"),
            "inflight": sum(run.inflight.get(sec, {}).values()),
        })
    return rows


def run_summary(run: TargetRun) -> dict[str, Any]:
    gates = evaluate_gates(run)
    total = run.total()
    return {
        "label": run.label,
        "target": run.target,
        "status": run.status,
        "failure": run.failure or None,
        "started_at": run.started_at,
        "processes": run.campaign.processes,
        "processes_reporting": len(run.reporting),
        "phases": [phase_summary(run, i) for i in range(len(run.campaign.phases))],
        "overall": {
            "offered": total.offered,
            "answered": total.answered,
            "error_count": total.error_count,
            "errors": dict(sorted(total.errors.items())),
            "latency_ms": percentiles_ms(total.latency),
        },
        "gates": [dataclasses.asdict(g) for g in gates],
        "gated": bool(gates),
        "passed": run.status == "complete" and all(g.passed for g in gates),
        "seconds": seconds_series(run),
    }


def campaign_summary(campaign: Campaign, runs: list[TargetRun]) -> dict[str, Any]:
    summaries = [run_summary(r) for r in runs]
    return {
        "campaign": campaign.name,
        "description": campaign.description,
        "file": campaign.path,
        "phases": [
            {"name": p.name, "mode": p.mode, "start_s": s, "duration_s": p.duration, "rpc": p.rpc}
            for p, s in zip(campaign.phases, campaign.phase_starts(), strict=True)
        ],
        "runs": summaries,
        # The verdict is the primary target's; a comparison target is for context only.
        "passed": bool(summaries) and bool(summaries[0]["passed"]),
    }
