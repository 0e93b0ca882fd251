"""The usual application rate (``apps_usual_per_day``): hand-made histories with hand-computed
rates, its place in the ``merchant_baseline`` view, and the offline build on a generated world."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features import catalog
from features.early_warning import USUAL_COLUMNS, baseline_table, usual_rate_frame
from features.early_warning.scan import add_segment_shares
from features.early_warning.usual import MIN_USUAL_DAYS, USUAL_DAYS
from features.population import build_offline_tables, generate_population

AS_OF = dt.date(2026, 11, 1)
D = dt.date


def _daily(merchant: str, first: dt.date, every: int = 1) -> list[tuple[str, dt.date, int]]:
    """Register rows from ``first`` to the day before ``AS_OF``, one every ``every`` days."""
    n = (AS_OF - first).days
    return [(merchant, first + dt.timedelta(days=k), 10_000) for k in range(0, n, every)]


FLOWS = pl.DataFrame(
    [
        *_daily("STEADY", D(2026, 5, 1)),
        *_daily("NEW", D(2026, 9, 2)),  # 60 days before AS_OF
        *_daily("BORDER", D(2026, 10, 4)),  # exactly MIN_USUAL_DAYS (28) before AS_OF
        *_daily("FRESH", D(2026, 10, 11)),  # 21 days: too short a history
        *_daily("QUIET", D(2026, 1, 1)),
        *_daily("GAPPY", D(2026, 6, 1), every=7),  # sells one day a week
    ],
    schema={"merchant_id": pl.String, "day": pl.Date, "gross_minor": pl.Int64},
    orient="row",
)
APPS = pl.DataFrame(
    [
        ("STEADY", D(2026, 7, 1)),  # before the 90-day window (it starts 2026-08-03): not counted
        ("STEADY", D(2026, 8, 3)),  # the window's first day: counted
        ("STEADY", D(2026, 9, 15)),
        ("STEADY", D(2026, 10, 31)),  # the last day of history: counted
        ("STEADY", D(2026, 11, 1)),  # at as_of: live velocity's business, not history
        ("NEW", D(2026, 8, 20)),  # before its first trading day: not counted
        ("NEW", D(2026, 9, 2)),
        ("NEW", D(2026, 10, 10)),
        ("NEW", D(2026, 10, 20)),
        ("BORDER", D(2026, 10, 4)),
        ("FRESH", D(2026, 10, 20)),
        ("FRESH", D(2026, 10, 21)),
        ("NEVER", D(2026, 10, 1)),  # applied, never traded
        *[("GAPPY", D(2026, 8, 3) + dt.timedelta(days=10 * k)) for k in range(9)],
    ],
    schema={"merchant_id": pl.String, "applied_on": pl.Date},
    orient="row",
)
IDS = pl.DataFrame({"merchant_id": ["STEADY", "NEW", "BORDER", "FRESH", "QUIET", "GAPPY", "NEVER"]})
# By hand: applications counted / days of the window since the first trading day.
EXPECTED: dict[str, float | None] = {
    "STEADY": 3 / 90,  # 08-03, 09-15, 10-31 over the whole window
    "NEW": 3 / 60,  # 09-02, 10-10, 10-20 over the 60 days it traded
    "BORDER": 1 / 28,  # 28 days is enough
    "FRESH": None,  # 21 < 28 days
    "QUIET": 0.0,  # known to have no applications: 0, not null
    "GAPPY": 9 / 90,  # every calendar day since its first trade counts, not only sale days
    "NEVER": None,  # no flows: no trading history
}


def test_the_usual_rate_by_hand() -> None:
    assert (USUAL_DAYS, MIN_USUAL_DAYS) == (90, 28)  # the figures EXPECTED was computed with
    got = usual_rate_frame(APPS, FLOWS, AS_OF, IDS)
    assert got.columns == ["merchant_id", *USUAL_COLUMNS] and got["merchant_id"].is_sorted()
    rates = dict(zip(got["merchant_id"].to_list(), got["apps_usual_per_day"].to_list(), strict=True))
    assert set(rates) == set(EXPECTED)
    for m, want in EXPECTED.items():
        assert rates[m] == (None if want is None else pytest.approx(want, rel=1e-12)), m


def test_undated_applications_count_on_the_last_day_and_no_table_means_unknown() -> None:
    # The synthetic raw table has no applied_on: each application is dated at the snapshot,
    # counted on the history's last day (so inside every merchant's window).
    undated = APPS.drop("applied_on")
    got = dict(usual_rate_frame(undated, FLOWS, AS_OF, IDS).iter_rows())
    assert got["STEADY"] == pytest.approx(5 / 90) and got["NEW"] == pytest.approx(4 / 60)
    assert got["QUIET"] == 0.0 and got["FRESH"] is None and got["NEVER"] is None
    # No applications history at all: nothing is known, every rate is null (not 0).
    none = usual_rate_frame(None, FLOWS, AS_OF, IDS)
    assert none.height == IDS.height and none["apps_usual_per_day"].null_count() == IDS.height


def test_the_rate_goes_last_in_the_baseline_view(tmp_path: Path) -> None:
    ts = dt.datetime.combine(AS_OF, dt.time(), tzinfo=dt.timezone.utc)
    stamp = [pl.lit(ts).alias("event_timestamp"), pl.lit(ts).alias("created_timestamp")]
    table = baseline_table(IDS, FLOWS, AS_OF, stamp, APPS)
    assert table["apps_usual_per_day"].dtype == pl.Float32
    assert dict(table.select("merchant_id", "apps_usual_per_day").iter_rows())["NEW"] == pytest.approx(0.05)
    # The share pass puts the shares between the revenue columns and the rate: catalogue order.
    path, profile = tmp_path / "b.parquet", tmp_path / "p.parquet"
    table.write_parquet(path)
    codes = pl.Series(range(IDS.height), dtype=pl.Int64)
    IDS.with_columns(region_code=codes % 2, industry_code=codes % 3).write_parquet(profile)
    add_segment_shares(path, profile)
    again = pl.read_parquet(path)
    assert again.columns == ["merchant_id", "event_timestamp", "created_timestamp", *catalog.BASELINE_FEATURES]
    assert again["apps_usual_per_day"].to_list() == table["apps_usual_per_day"].to_list()
    # The view's last field, and the dense matrix's last column: every older column keeps its place.
    assert catalog.BASELINE.field_names[-1] == "apps_usual_per_day"
    assert catalog.MATRIX_COLUMNS[-1] == "apps_usual_per_day"
    assert catalog.MATRIX_COLUMNS[-3:-1] == ("region_drop_share", "industry_drop_share")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("usual-world")
    generate_population(root, merchants=1500, seed=3, as_of=AS_OF, journal_sample=0.0)
    build_offline_tables(root, AS_OF)
    return root


def test_the_offline_build_materializes_the_rate_from_the_raw_applications(generated: Path) -> None:
    table = pl.read_parquet(generated / "offline" / f"{catalog.BASELINE.name}.parquet")
    assert table.columns == ["merchant_id", "event_timestamp", "created_timestamp", *catalog.BASELINE_FEATURES]
    # Direct: the generator's one undated application per merchant, on the last day of history,
    # over min(90, days since the first flows row) days, null under 28 days or with no flows.
    first = (
        pl.scan_parquet(generated / "raw" / "flows" / "*.parquet").filter(pl.col("day") < AS_OF)
        .group_by("merchant_id").agg(pl.col("day").min().alias("first")).collect()
    )
    apps = pl.scan_parquet(generated / "raw" / "applications" / "*.parquet").group_by("merchant_id").len().collect()
    both = table.join(first, on="merchant_id", how="left").join(apps, on="merchant_id", how="left")
    days = np.array([min(USUAL_DAYS, (AS_OF - f).days) if f is not None else 0 for f in both["first"].to_list()])
    n = both["len"].fill_null(0).to_numpy()
    want = np.where(days >= MIN_USUAL_DAYS, n / np.maximum(days, 1), np.nan)
    got = both["apps_usual_per_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-6)
    # One application each: most merchants' usual rate is 1/90 a day; a few young ones' more.
    assert (n == 1).all()
    assert np.median(got[~np.isnan(got)]) == pytest.approx(1 / 90, rel=1e-6)
