"""``creditauth bench variants``: what champion/challenger and shadow scoring cost a replica.

Three deployments of one registry, side by side in one process and one run, interleaved
round by round (A B C A B C ...), each scoring the same batches of fresh applications:

- ``off``: the champion alone;
- ``split``: the champion and one challenger at a 10% share;
- ``split-shadow``: the same, plus one shadow bundle scoring every decision.

The challenger and the shadow are the champion's model under another policy version, so
the figures are the cost of the variant machinery (the split by merchant hash, the arms'
partial batches, the shadow's extra decide over the gathered inputs), not of a slower
model. Reported: decisions per second of the replica's ``score`` (the median round) and CPU
µs per decision, and each against ``off``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.settings import BundleSettings, Settings

CONFIGS = ("off", "split", "split-shadow")
SHARE = 0.1


@dataclass
class Figure:
    config: str
    rounds: list[float]  # decisions per second, per round
    cpu_us: list[float]  # process CPU µs per decision, per round

    @property
    def rate(self) -> float:
        return statistics.median(self.rounds)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_us)


def add_parser(bench_sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    bv = bench_sub.add_parser("variants", help="champion alone vs a 10%% challenger vs challenger + shadow, one run")
    common(bv)
    bv.add_argument("--batches", type=int, default=200, help="batches per configuration and round (default 200)")
    bv.add_argument("--size", type=int, default=100, help="decisions per batch (default 100)")
    bv.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median counts (default 5)")
    bv.set_defaults(run=main)


def _registry(settings: Settings, root: Path) -> str:
    """A registry with the three deployments (see the module docstring)."""
    from features import TagCatalog
    from services.bundles import Registry
    from services.bundles.build import from_artifact
    from services.bundles.deploy import promote, set_arm
    from services.policy.config import DEFAULT_POLICY

    reg = Registry(root / "registry")
    tags = {t.name: t.id for t in TagCatalog.load(settings.features)}
    champion = reg.put(from_artifact(settings.data_dir, settings.model_version, policy_path=None, tags=tags))
    other = root / "policy-bench.yaml"
    other.write_text(DEFAULT_POLICY.read_text().replace("version: policy-", "version: bench-policy-", 1))
    challenger = reg.put(from_artifact(settings.data_dir, settings.model_version, policy_path=other, tags=tags))
    for name in CONFIGS:
        promote(reg, name, champion, tags=tags)
        if name != "off":
            set_arm(reg, name, challenger, arm="challenger", share=SHARE, tags=tags)
        if name == "split-shadow":
            set_arm(reg, name, challenger, arm="shadow", share=None, tags=tags)
    return reg.uri


def _batches(n: int, size: int, merchants: int, seed: int) -> list[Any]:
    from services.schema.records import REQUEST_DTYPE, RequestBatch

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r = np.zeros(size, REQUEST_DTYPE)
        r["application_id"] = [f"bv-{uuid.uuid4().hex[:24]}".encode() for _ in range(size)]
        r["merchant_id"] = [f"M{int(i):08d}".encode() for i in rng.integers(0, merchants, size)]
        r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = 500_000, 0, 12, 1, 1
        r["declared_revenue_minor"] = float("nan")
        r["deadline"] = time.time() + 3600
        out.append(RequestBatch.of_records([row.tobytes() for row in r]))
    return out


def run(settings: Settings, batches: int, size: int, rounds: int) -> list[Figure]:
    import pyarrow.dataset as ds

    from services.scoring.swap import SwappableEngine

    with tempfile.TemporaryDirectory(prefix="creditauth-bench-variants-") as tmp:
        uri = _registry(settings, Path(tmp))
        merchants = ds.dataset(settings.data_dir / "raw" / "merchants").count_rows()
        engines = {c: SwappableEngine.open(settings.model_copy(update={
            "bundle": BundleSettings(registry=uri, deployment=c, poll_interval_s=3600)})) for c in CONFIGS}
        figures = {c: Figure(c, [], []) for c in CONFIGS}
        try:
            for k, engine in enumerate(engines.values()):  # warm: first calls, caches
                for b in _batches(5, size, merchants, 1000 + k):
                    engine.score(b)
            for r in range(rounds):
                for i, (c, engine) in enumerate(engines.items()):
                    work = _batches(batches, size, merchants, seed=r * 10 + i)
                    t0, c0 = time.perf_counter(), time.process_time()
                    for b in work:
                        engine.score(b)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    figures[c].rounds.append(batches * size / wall)
                    figures[c].cpu_us.append(cpu * 1e6 / (batches * size))
        finally:
            for engine in engines.values():
                engine.close()
    return list(figures.values())


def table(figures: list[Figure]) -> str:
    base = figures[0]
    lines = ["| configuration | decisions/s (median round) | vs off | CPU µs/decision | vs off |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for f in figures:
        lines.append(f"| {f.config} | {f.rate:,.0f} | {f.rate / base.rate - 1:+.1%} | {f.cpu:.1f} | "
                     f"{f.cpu / base.cpu - 1:+.1%} |")
    return "\n".join(lines)


def main(settings: Settings, args: argparse.Namespace) -> None:
    figures = run(settings, args.batches, args.size, args.rounds)
    print(f"# variants: {args.rounds} interleaved rounds of {args.batches} batches of {args.size}, "
          f"store {settings.features.online_store}; challenger share {SHARE:.0%}")
    print(table(figures))
