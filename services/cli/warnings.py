"""``creditauth warnings scan | bench``: the early-warning scan (``features.early_warning``).

``scan`` reads the daily flows and merchants under the data directory, writes the warnings
table (Parquet) and, with ``--propose``, the controls it proposes: each with the one
``creditauth controls set`` command that applies it (an operator runs it, authenticated;
the scan never sets a control). ``bench`` scores the scan against the synthetic world's
hidden shocks (precision and recall, docs/warnings.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from services.settings import Settings

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {s!r}") from exc


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {s!r}") from exc


def _thresholds(p: argparse.ArgumentParser) -> None:
    from features.early_warning import Thresholds

    d = Thresholds()
    g = p.add_argument_group("thresholds")
    g.add_argument("--z", type=float, default=d.z, help=f"merchant: robust z-score at most this (default {d.z})")
    g.add_argument("--change", type=float, default=d.change,
                   help=f"merchant: change against its profile at most this (default {d.change})")
    g.add_argument("--segment-share", type=float, default=d.segment_share,
                   help=f"segment: share of merchants flagged at least this (default {d.segment_share})")
    g.add_argument("--segment-lift", type=float, default=d.segment_lift,
                   help=f"segment: share at least this x the median share (default {d.segment_lift})")


def add_warnings(sub: _Subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    w = sub.add_parser("warnings", help="early warnings: merchants and segments whose revenue dropped suddenly")
    w_sub = w.add_subparsers(dest="cmd", required=True)
    sc = w_sub.add_parser("scan", help="scan flows against each merchant's own baseline; write warnings.parquet")
    common(sc)
    sc.add_argument("--as-of", type=_date, help="scan as of this date (default: the day after the last flows)")
    sc.add_argument("--out", type=Path, help="warnings table (default <data-dir>/warnings/warnings-<as-of>.parquet)")
    sc.add_argument("--propose", type=Path, help="also write proposed controls (JSON) here")
    sc.add_argument("--limit-factor", type=float, default=0.5, help="proposed segment limit factor (default 0.5)")
    sc.add_argument("--ttl-days", type=float, default=7.0, help="proposed controls expire after (default 7 days)")
    _thresholds(sc)
    sc.set_defaults(run=warnings_scan)
    be = w_sub.add_parser("bench", help="precision and recall against the synthetic world's hidden shocks")
    common(be)
    be.add_argument("--seeds", type=_ints, default=[1, 2, 3, 4, 5], help="worlds to generate (default 1,2,3,4,5)")
    be.add_argument("--merchants", type=int, default=20_000, help="merchants per world (default 20000)")
    be.add_argument("--offsets", type=_ints, default=[0, 7, 14, 21, 28],
                    help="scan this many days before each world's end (default 0,7,14,21,28)")
    be.add_argument("--as-of", type=_date, default=dt.date(2026, 11, 1), help="the worlds' generation date")
    _thresholds(be)
    be.set_defaults(run=warnings_bench)


def _ticker(bar: tqdm) -> Callable[[int], None]:  # type: ignore[type-arg]
    def tick(n: int) -> None:
        bar.update(n)

    return tick


def _chosen(args: argparse.Namespace) -> object:
    from features.early_warning import Thresholds

    return Thresholds(z=args.z, change=args.change, segment_share=args.segment_share, segment_lift=args.segment_lift)


def warnings_scan(settings: Settings, args: argparse.Namespace) -> None:
    import polars as pl

    from features.early_warning import Thresholds, propose, scan, write_proposals, write_warnings

    data_dir = settings.features.data_dir
    merchants = pl.scan_parquet(data_dir / "raw" / "merchants" / "*.parquet").select(pl.len()).collect().item() \
        if (data_dir / "raw" / "merchants").is_dir() else None
    th = _chosen(args)
    assert isinstance(th, Thresholds)
    with tqdm(total=merchants, desc="warnings scan", unit="merchant", unit_scale=True, disable=None,
              file=sys.stderr) as bar:
        result = scan(data_dir, args.as_of, thresholds=th, progress=_ticker(bar))
    out = args.out or data_dir / "warnings" / f"warnings-{result.as_of}.parquet"
    write_warnings(result, out)
    kinds = result.warnings.group_by("kind").len().sort("kind").iter_rows()
    print(f"{out}: {result.warnings.height} warning(s) as of {result.as_of}: "
          + (", ".join(f"{n} {k}" for k, n in kinds) or "none"))
    for row in result.warnings.filter(pl.col("kind") != "merchant").iter_rows(named=True):
        print(f"  {row['reason_code']} {row['kind']} {row['subject']}: {row['reason']}")
    if args.propose is not None:
        proposals = propose(result, now=time.time(), ttl_s=args.ttl_days * 86400.0, factor=args.limit_factor,
                            merchants_file=args.propose.with_suffix(".merchants.txt"))
        write_proposals(proposals, args.propose, as_of=result.as_of)
        print(f"{args.propose}: {len(proposals)} proposed control(s); apply one with its command, e.g.")
        for p in proposals[:3]:
            print(f"  {p.shell()}")


def warnings_bench(settings: Settings, args: argparse.Namespace) -> None:
    from features.early_warning import Thresholds
    from features.early_warning.evaluate import bench

    th = _chosen(args)
    assert isinstance(th, Thresholds)
    total = len(args.seeds) * len(args.offsets) * args.merchants
    with tempfile.TemporaryDirectory(prefix="creditauth-warnings-") as root, \
            tqdm(total=total, desc="warnings bench", unit="merchant", unit_scale=True, disable=None,
                 file=sys.stderr) as bar:
        s = bench(Path(root), seeds=args.seeds, merchants=args.merchants, offsets=args.offsets, as_of=args.as_of,
                  thresholds=th, progress=_ticker(bar))
    print(f"{len(args.seeds)} worlds x {len(args.offsets)} scans, {args.merchants:,} merchants each; {th}")
    print("| level | flagged | true shocks | hits | precision | recall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, c in (("merchant", s.merchants), ("region", s.regions)):
        print(f"| {name} | {c.flagged:,} | {c.positives:,} | {c.hits:,} | {c.precision:.3f} | {c.recall:.3f} |")
    d = s.deep
    print(f"merchants whose revenue was at least halved: {d.hits:,} of {d.positives:,} flagged (recall {d.recall:.3f})")
    print(f"industries flagged (the world has no industry shocks): {s.industries_flagged}")
