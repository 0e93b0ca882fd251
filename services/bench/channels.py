"""``creditauth bench channels``: front end -> replica channels, one batch per call.

A plain Ray actor call, a Ray Compiled Graph, and the direct channel (with the
replica answering on a worker thread, as served, and inline) carry the same
encoded batches to a replica that answers from a canned response, so only the
channel is measured (``services/baselines/ray_channels.py``). Prints, per
channel and batch size, the median round's calls/s, p50/p99 round trip and the
machine's CPU per call (all processes, idle subtracted), with ratios to the
direct channel. Needs no data: it starts its own local Ray cluster.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from services.baselines.ray_channels import CHANNELS, Figure, median_by_case, run


def table(figures: list[Figure]) -> str:
    best = median_by_case(figures)
    sizes = sorted({f.batch for f in figures})
    lines = [
        f"{'channel':14s} {'batch':>5s} {'calls/s':>9s} {'p50 us':>9s} {'p99 us':>9s} "
        f"{'CPU us/call':>12s} {'p50 vs direct':>14s}"
    ]
    for n in sizes:
        ref = best.get(("direct", n))
        for ch in CHANNELS:
            f = best.get((ch, n))
            if f is None:
                continue
            ratio = f"{f.p50_us / ref.p50_us:.2f}x" if ref else "-"
            lines.append(
                f"{ch:14s} {n:5d} {f.calls_per_s:9,.0f} {f.p50_us:9.1f} {f.p99_us:9.1f} "
                f"{f.cpu_us_per_call:12.1f} {ratio:>14s}"
            )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = run(sizes, args.calls, args.rounds)
    print(f"# channels: {args.rounds} interleaved rounds of {args.calls} serial calls; median round (by p50)")
    print(table(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(fig) | {"cpu_us_per_call": fig.cpu_us_per_call} for fig in figures], f, indent=1)
