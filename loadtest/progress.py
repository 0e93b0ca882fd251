"""Live progress: one line per second while a campaign runs, a table at the end."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from loadtest.hist import Quantiles
from loadtest.results import GENERATOR_LAG_WARN_MS, GateCheck, TargetRun
from loadtest.tally import Interval


def _ms(v: float | None) -> str:
    return "     -" if v is None else f"{v:6.1f}" if v < 1000 else f"{v / 1000:5.1f}s"


class Progress:
    def __init__(self, out: TextIO | None = None, *, enabled: bool = True) -> None:
        self.out = out or sys.stderr
        self.enabled = enabled
        self._phase: int | None = -1

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.out, flush=True)

    def start(self, run: TargetRun, workers: int) -> None:
        c = run.campaign
        self._phase = -1
        self.say(
            f"== {c.name} -> {run.label} ({run.target}): {len(c.phases)} phases, {c.duration:g} s"
            f" + drain up to {c.drain_s:g} s, {workers} generator process(es)"
        )
        self.say(
            "     t  phase            offered/s     sent/s  answered/s  errors   p99 1s   p99 phase  in-flight"
        )

    def second(self, run: TargetRun, sec: int) -> None:
        """The line for second ``sec`` (call once it is complete)."""
        idx = run.phase_at(sec + 0.5)
        if idx != self._phase:
            self._phase = idx
            name = run.campaign.phases[idx].name if idx is not None else "drain"
            self.say(f"  -- {name}")
        iv = run.seconds.get(sec, Interval())
        h = iv.latency
        p99 = Quantiles(h).value_at(99.0) / 1000.0 if h.get_total_count() else None
        ph = run.phases[idx].latency if idx is not None else None
        p99_phase = Quantiles(ph).value_at(99.0) / 1000.0 if ph is not None and ph.get_total_count() else None
        name = run.campaign.phases[idx].name if idx is not None else "drain"
        inflight = sum(run.inflight.get(sec, {}).values())
        self.say(
            f"  {sec + 1:4d}s {name[:14]:<14} {iv.offered:>11,} {iv.sent:>10,} {iv.answered:>11,}"
            f" {iv.error_count:>7,} {_ms(p99)} ms {_ms(p99_phase)} ms {inflight:>9,}"
        )

    def table(self, summary: dict[str, Any]) -> None:
        self.say(f"\n== results: {summary['label']} ({summary['target']}), {summary['status']}"
                 + (f": {summary['failure']}" if summary.get("failure") else ""))
        self.say(
            f"  {'phase':<14}{'planned/s':>11}{'throughput/s':>14}{'errors':>9}{'err rate':>10}"
            f"{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}  (ms, from intended send time)"
        )
        for p in summary["phases"]:
            lat = p["latency_ms"]
            planned = "closed" if p["planned_rate"] is None else f"{p['planned_rate']:,.0f}"
            self.say(
                f"  {p['name'][:14]:<14}{planned:>11}{p['throughput']:>14,.0f}{p['error_count']:>9,}"
                f"{p['error_rate']:>10.2%}"
                + "".join(f"{lat.get(k, 0):>9.1f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
            )
            if p["errors"]:
                self.say(f"  {'':<14}errors: {p['errors']}")
            lag = p["send_lag_ms"].get("p99", 0.0)
            if p["late_sends"] == "in_flight_cap":
                self.say(
                    f"  {'':<14}note: sends were late (p99 {lag:,.0f} ms) because max_in_flight was reached: "
                    "the target did not keep up; that wait is counted in latency"
                )
            elif p["late_sends"] == "generator":
                self.say(
                    f"  {'':<14}warning: sends were late (p99 {lag:,.0f} ms > {GENERATOR_LAG_WARN_MS:.0f} ms) "
                    "with the in-flight cap not reached: the generator was short of CPU (add processes or "
                    "lower the rate) or its streams were reconnecting"
                )

    def gates(self, checks: list[GateCheck]) -> None:
        if not checks:
            self.say("  no SLO gates")
        for g in checks:
            self.say(f"  {g.describe()}")
