"""``creditauth bench log``: what the decision log costs callers, end to end, log on against off.

The engine-level figure (``python -m services.decisionlog.bench cost``) puts the log beside
``ScoringEngine.score`` alone, the smallest denominator there is, and its rounds end when
the writer has caught up, which times the writer's wake-up too. Callers see the whole
path: this runs ``creditauth serve`` (front end, Ray, the replica: every process pinned
to one core) with the log on and with it off, rounds alternating (on off off on ...), the
load generator on the other core, over gRPC:

- batch throughput: ``AuthorizeBatch`` of 100, closed loop (8 in flight), the decisions
  answered per second and the CPU the server's whole process group spent per decision
  (``psutil``, every process of the session: front end, raylet, GCS, replica, writer
  thread). On one core, CPU per decision is what bounds throughput, and it is far steadier
  than a rate on a shared machine;
- unary latency open loop: ``Authorize`` at a fixed rate, latency from each request's
  intended send time (the project's campaign runner), p50 and p99.

Figures in docs/decision-log.md, "What the log costs the engine".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from services.bench.serving import _cores, _free_port, _pinned, _stop, _wait_ready
from services.settings import Settings

VARIANTS = ("log on", "log off")


@dataclass
class Round:
    variant: str
    batch_per_s: float
    cpu_us: float  # server CPU (every process of its session) per batch decision
    unary_p50_ms: float
    unary_p99_ms: float


@dataclass
class Figures:
    rounds: list[Round] = field(default_factory=list)

    def of(self, variant: str) -> list[Round]:
        return [r for r in self.rounds if r.variant == variant]


def _campaign(directory: Path, name: str, phases: list[dict[str, Any]], data_dir: Path) -> Path:
    doc = {
        "name": name, "target": "127.0.0.1:1", "data_dir": str(data_dir), "processes": 1, "timeout": "5s",
        "mix": {"rpc": "unary", "batch_size": 100, "invalid_share": 0.0, "unknown_merchant_share": 0.0},
        "phases": phases,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run_campaign(path: Path, port: int, report_dir: Path) -> dict[str, Any]:
    _, load_cpus = _cores()
    out = subprocess.run(
        [sys.executable, "-m", "loadtest", "campaign", str(path), "--target", f"127.0.0.1:{port}",
         "--report-dir", str(report_dir), "--quiet", "--json"],
        capture_output=True, text=True, timeout=900, preexec_fn=lambda: os.sched_setaffinity(0, load_cpus),
    )
    if out.returncode not in (0, 1):  # 1: a gate failed; these campaigns gate nothing
        raise RuntimeError(f"campaign {path.name} failed ({out.returncode}): {out.stderr[-1500:]}")
    summary: dict[str, Any] = json.loads(out.stdout)
    first: dict[str, Any] = summary["runs"][0]
    return first


def _session_cpu(sid: int) -> float:
    """CPU seconds (user + system) of every live process of session ``sid``."""
    total = 0.0
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) != sid:
                continue
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return total


def _phase(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in run["phases"] if p["name"] == name)


def _serve(args: argparse.Namespace, work: Path, variant: str, port: int) -> subprocess.Popen[bytes]:
    config = work / f"{variant.replace(' ', '-')}.yaml"
    config.write_text(yaml.safe_dump({
        "decision_log": {"enabled": variant == "log on", "directory": str(work / f"decisions-{port}")},
    }))
    server_cpus, _ = _cores()
    argv = [sys.executable, "-m", "services.cli.main", "serve", "--data-dir", str(args.data_dir),
            "--config", str(config), "--port", str(port), "--channel", args.channel, "--plaintext"]
    log = (work / f"serve-{port}.log").open("wb")
    return subprocess.Popen(_pinned(argv, server_cpus), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _one(args: argparse.Namespace, work: Path, variant: str) -> Round:
    port = _free_port()
    proc = _serve(args, work, variant, port)
    try:
        _wait_ready(port, proc, None)
        unary = _campaign(work, "unary", [
            {"name": "warm-up", "rate": 100, "duration": "5s", "gate": False},
            {"name": "unary", "rate": args.rate, "duration": f"{args.seconds}s", "gate": False},
        ], args.data_dir)
        batch = _campaign(work, "batch", [
            {"name": "batch", "rpc": "batch", "concurrency": 8, "duration": f"{args.seconds}s", "gate": False},
        ], args.data_dir)
        u = _phase(_run_campaign(unary, port, work / "reports"), "unary")
        cpu0 = _session_cpu(proc.pid)
        b = _phase(_run_campaign(batch, port, work / "reports"), "batch")
        cpu = _session_cpu(proc.pid) - cpu0
    finally:
        _stop(proc)
    decided = max(1, int(b["answered"]))
    return Round(variant, float(b["throughput"]), cpu / decided * 1e6,
                 float(u["latency_ms"]["p50"]), float(u["latency_ms"]["p99"]))


def run(args: argparse.Namespace) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="creditauth-logcost-") as tmp:
        work = Path(tmp)
        for rnd in range(args.rounds):
            order = VARIANTS if rnd % 2 == 0 else VARIANTS[::-1]  # on off, off on: drift hits both
            for variant in order:
                r = _one(args, work, variant)
                figures.rounds.append(r)
                print(f"round {rnd + 1}/{args.rounds} {variant:<8} batch {r.batch_per_s:>8,.0f}/s "
                      f"{r.cpu_us:6.1f} CPU µs/decision  unary p50 {r.unary_p50_ms:.2f} p99 {r.unary_p99_ms:.2f} ms",
                      flush=True)
    return figures


def table(f: Figures) -> str:
    med: dict[str, dict[str, float]] = {}
    for v in VARIANTS:
        rs = f.of(v)
        med[v] = {k: statistics.median(getattr(r, k) for r in rs)
                  for k in ("batch_per_s", "cpu_us", "unary_p50_ms", "unary_p99_ms")}
    on, off = med["log on"], med["log off"]
    lines = [
        "| | batch decisions/s | server CPU µs/decision | unary p50 ms | unary p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for v in VARIANTS:
        m = med[v]
        lines.append(f"| {v} | {m['batch_per_s']:,.0f} | {m['cpu_us']:.1f} | {m['unary_p50_ms']:.2f} "
                     f"| {m['unary_p99_ms']:.2f} |")
    lines.append(
        f"| cost | {1 - on['batch_per_s'] / off['batch_per_s']:+.1%} | {on['cpu_us'] / off['cpu_us'] - 1:+.1%} "
        f"| {on['unary_p50_ms'] - off['unary_p50_ms']:+.2f} | {on['unary_p99_ms'] - off['unary_p99_ms']:+.2f} |"
    )
    return "\n".join(lines) + f"\n\n(medians of {len(f.of('log on'))} rounds each)"


def add_parser(bench_sub: Any, common: Any) -> None:
    p = bench_sub.add_parser("log", help="the decision log's cost end to end over gRPC, log on against off")
    common(p)
    p.add_argument("--rounds", type=int, default=4, help="rounds of (on, off), alternating order")
    p.add_argument("--seconds", type=int, default=20, help="length of each measured phase")
    p.add_argument("--rate", type=int, default=200, help="unary requests per second, open loop")
    p.add_argument("--channel", default="direct", choices=("local", "direct", "handle"),
                   help="front end -> replica channel of both servers (default direct)")
    p.set_defaults(run=main)


def main(settings: Settings, args: argparse.Namespace) -> None:
    data_dir = settings.data_dir
    if not (data_dir / "models" / "LATEST").exists():
        raise SystemExit(f"no trained world under {data_dir}: run `creditauth demo` (or the data steps) first")
    args.data_dir = data_dir
    print(table(run(args)))
