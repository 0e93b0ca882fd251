"""The scan against the generator's ground truth: precision and recall.

A shock is the scan's to find when it is ``window`` days old on the scan's ``as_of``: at
least ``window[0]`` days (half of the last week hit, so the week's revenue can show it) and
at most ``window[1]`` (a CronJob scanning daily has seen it for four weeks; by then the
drop is part of the merchant's own profile and no longer sudden). A merchant is a positive
when its own or its region's shock is in the window; a region when its shock is. Anything
flagged otherwise counts against precision, shocks just outside the window included.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features.early_warning.scan import ScanResult, Thresholds, scan
from features.population import generate_population
from features.population.truth import merchant_shocks, region_shocks

WINDOW = (4, 28)
DEEP = 0.5  # revenue multiplied by at most this: "at least halved"


@dataclass(frozen=True)
class Counts:
    flagged: int
    positives: int
    hits: int

    @property
    def precision(self) -> float:
        return self.hits / self.flagged if self.flagged else float("nan")

    @property
    def recall(self) -> float:
        return self.hits / self.positives if self.positives else float("nan")

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.flagged + other.flagged, self.positives + other.positives, self.hits + other.hits)


@dataclass(frozen=True)
class Scores:
    merchants: Counts
    regions: Counts
    industries_flagged: int  # the generator has no industry shocks: every one is a false alarm
    deep: Counts = Counts(0, 0, 0)  # merchants whose revenue was at least halved (recall only)

    def __add__(self, other: Scores) -> Scores:
        return Scores(self.merchants + other.merchants, self.regions + other.regions,
                      self.industries_flagged + other.industries_flagged, self.deep + other.deep)


def _counts(flagged: pl.Series, positive: pl.Series) -> Counts:
    return Counts(int(flagged.sum()), int(positive.sum()), int((flagged & positive).sum()))


def evaluate(result: ScanResult, *, seed: int, generated_as_of: dt.date,
             window: tuple[int, int] = WINDOW) -> Scores:
    """Score ``result`` against the shocks of the population generated with ``seed`` for
    ``generated_as_of``; raises ``ValueError`` if that is not the population scanned."""
    m = result.merchants
    truth = merchant_shocks(seed=seed, merchants=m.height, as_of=generated_as_of)
    joined = m.join(truth, on="merchant_id", how="left", suffix="_truth")
    if not (joined["region"] == joined["region_truth"]).all():
        raise ValueError(f"the scanned population was not generated with seed {seed}")
    lo, hi = (result.as_of - dt.timedelta(days=d) for d in (window[1], window[0]))

    def recent(col: str) -> pl.Expr:
        return pl.col(col).is_between(lo, hi).fill_null(False)

    pos = joined.select(recent("own_shock_day") | recent("region_shock_day")).to_series()
    # The deepest shock in the window: own and regional factors multiply when both hit.
    factor = pl.when(recent("own_shock_day")).then("own_factor").otherwise(1.0) * pl.when(
        recent("region_shock_day")).then("region_factor").otherwise(1.0)
    deep = joined.select(factor <= DEEP).to_series()
    regions = region_shocks(seed=seed, as_of=generated_as_of).filter(recent("shock_day"))["region"]
    seg = result.segments
    reg = seg.filter(pl.col("kind") == "region")
    return Scores(
        merchants=_counts(joined["flagged"], pos),
        regions=_counts(reg["flagged"], reg["subject"].is_in(regions.implode())),
        industries_flagged=int(seg.filter((pl.col("kind") == "industry") & pl.col("flagged")).height),
        deep=_counts(joined["flagged"], deep),
    )


def bench(root: Path, *, seeds: Sequence[int], merchants: int, offsets: Sequence[int],
          as_of: dt.date, thresholds: Thresholds | None = None,
          progress: Callable[[int], None] | None = None) -> Scores:
    """Generate a population per seed under ``root`` and scan it ``offsets`` days before its
    end; the scores summed over every scan. ``progress``: merchants scanned."""
    total = Scores(Counts(0, 0, 0), Counts(0, 0, 0), 0, Counts(0, 0, 0))
    for seed in seeds:
        world = root / f"seed-{seed}"
        generate_population(world, merchants=merchants, seed=seed, as_of=as_of, journal_sample=0.0)
        for off in offsets:
            result = scan(world, as_of - dt.timedelta(days=off), thresholds=thresholds, progress=progress)
            total = total + evaluate(result, seed=seed, generated_as_of=as_of)
        shutil.rmtree(world)
    return total
