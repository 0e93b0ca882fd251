"""``python -m features.population``: generate a population and its offline tables, with
progress bars, timing and peak memory per step (what docs/benchmarks/features.md records).

    python -m features.population --data-dir /tmp/pop1m --merchants 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from features.population import build_offline_tables, generate_population
from features.population.offline import PASSES


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _ticker(bar: Any) -> Callable[[int], None]:
    def tick(n: int) -> None:
        bar.update(n)

    return tick


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m features.population", description=__doc__)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--merchants", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2026, 11, 1))
    p.add_argument("--journal-sample", type=float, default=0.001,
                   help="fraction of merchants with a per-transaction journal")
    p.add_argument("--skip-generate", action="store_true", help="reuse the raw parts already there")
    args = p.parse_args(argv)

    if not args.skip_generate:
        t0 = time.perf_counter()
        with tqdm(total=args.merchants, desc="generate", unit="merchant", unit_scale=True) as bar:
            report = generate_population(
                args.data_dir, merchants=args.merchants, seed=args.seed, as_of=args.as_of,
                progress=_ticker(bar), journal_sample=args.journal_sample,
            )
        print(
            f"generate: {report.merchants:,} merchants, {report.flow_rows:,} daily register rows, "
            f"{report.transaction_rows:,} journal transactions in {time.perf_counter() - t0:.1f} s, "
            f"peak RSS {peak_rss_mib():,.0f} MiB",
            flush=True,
        )
    t0 = time.perf_counter()
    with tqdm(total=PASSES * args.merchants, desc="offline tables + tags", unit="merchant",
              unit_scale=True) as bar:
        paths = build_offline_tables(args.data_dir, args.as_of, progress=_ticker(bar))
    size = sum(p.stat().st_size for p in paths.values()) / 2**20
    print(
        f"offline tables: {len(paths)} tables ({size:,.0f} MiB) in {time.perf_counter() - t0:.1f} s, "
        f"peak RSS {peak_rss_mib():,.0f} MiB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
