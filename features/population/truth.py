"""The generator's hidden revenue shocks, re-derived: ground truth for the early-warning scan.

``generate`` never writes the shocks (a lender never sees them). They are a pure function
of ``(seed, merchants)``: each chunk's traits are the first draws of its own stream
(``generate._draw_traits`` with ``[seed, chunk]``), so drawing them again gives exactly the
shocks the flows were made with, without regenerating the flows.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from features.population import world
from features.population.generate import CHUNK, _draw_traits, merchant_ids
from features.population.world import HISTORY_DAYS


def _date(day: np.ndarray, first: dt.date) -> pl.Series:
    """History day indices as dates, null where -1 (no shock)."""
    dates = np.datetime64(first, "D") + np.maximum(day, 0).astype("timedelta64[D]")
    return pl.Series(dates).set(pl.Series(day < 0), None)


def merchant_shocks(*, seed: int, merchants: int, as_of: dt.date) -> pl.DataFrame:
    """Per merchant: ``region``, ``industry``, its own shock (``own_shock_day``, ``own_factor``)
    and its region's (``region_shock_day``, ``region_factor``); days null where none.

    ``as_of`` is the date the population was generated for (its flows end the day before).
    """
    regions = world.region_effects(seed)
    first = as_of - dt.timedelta(days=HISTORY_DAYS)
    frames = []
    for chunk, start in enumerate(range(0, merchants, CHUNK)):
        n = min(CHUNK, merchants - start)
        tr = _draw_traits(np.random.default_rng([seed, chunk]), n, regions)
        frames.append(pl.DataFrame({
            "merchant_id": merchant_ids(start, n),
            "region": np.array(world.REGIONS, dtype=object)[tr.region],
            "industry": np.array([i.name for i in world.INDUSTRIES], dtype=object)[tr.ind],
            "own_shock_day": _date(tr.shock_day, first),
            "own_factor": tr.shock_factor,
            "region_shock_day": _date(regions.shock_day[tr.region], first),
            "region_factor": regions.shock_factor[tr.region],
        }))
    return pl.concat(frames)


def region_shocks(*, seed: int, as_of: dt.date) -> pl.DataFrame:
    """The regions hit by a downturn: ``region``, ``shock_day``, ``factor``."""
    r = world.region_effects(seed)
    hit = np.nonzero(r.shock_day >= 0)[0]
    first = as_of - dt.timedelta(days=HISTORY_DAYS)
    return pl.DataFrame({
        "region": [world.REGIONS[i] for i in hit],
        "shock_day": _date(r.shock_day[hit], first),
        "factor": r.shock_factor[hit],
    })
