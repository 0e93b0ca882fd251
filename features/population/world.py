"""The hidden world the synthetic population is drawn from.

Everything here is ground truth a real lender never sees: per-industry and
per-region effects, and the latent default process. Observable data (flows,
bureau, applications) is derived from it with noise, so a model trained on the
observable side has something real, but not trivial, to learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HISTORY_DAYS = 180


@dataclass(frozen=True)
class Industry:
    name: str
    segment: str  # street_shop | online_store | small_factory
    daily_txn: float  # median transactions per open day
    ticket: float  # median ticket, major currency units
    volatility: float  # typical day-to-day coefficient of variation
    refund_rate: float
    night_share: float
    risk: float  # additive effect on the default log-odds


INDUSTRIES: tuple[Industry, ...] = (
    Industry("grocery", "street_shop", 120, 35, 0.20, 0.004, 0.10, -0.30),
    Industry("restaurant", "street_shop", 90, 60, 0.30, 0.006, 0.35, 0.25),
    Industry("apparel", "street_shop", 25, 180, 0.45, 0.040, 0.05, 0.20),
    Industry("electronics", "street_shop", 12, 900, 0.55, 0.030, 0.04, 0.10),
    Industry("pharmacy", "street_shop", 80, 55, 0.18, 0.003, 0.15, -0.50),
    Industry("beauty_salon", "street_shop", 18, 150, 0.35, 0.010, 0.06, 0.15),
    Industry("hardware", "street_shop", 20, 220, 0.40, 0.015, 0.02, -0.10),
    Industry("auto_repair", "street_shop", 8, 700, 0.50, 0.008, 0.03, 0.05),
    Industry("online_fashion", "online_store", 60, 120, 0.50, 0.080, 0.30, 0.40),
    Industry("online_electronics", "online_store", 30, 650, 0.55, 0.050, 0.25, 0.30),
    Industry("small_factory", "small_factory", 4, 9000, 0.70, 0.010, 0.01, 0.35),
    Industry("wholesale", "small_factory", 10, 3000, 0.45, 0.012, 0.02, 0.00),
)
SEGMENTS: tuple[str, ...] = ("street_shop", "online_store", "small_factory")
N_REGIONS = 31
REGIONS: tuple[str, ...] = tuple(f"R{i:02d}" for i in range(1, N_REGIONS + 1))
CHANNELS: tuple[str, ...] = ("POS_TERMINAL", "MOBILE_APP", "WEB", "PARTNER_API", "BRANCH")
PRODUCTS: tuple[str, ...] = ("WORKING_CAPITAL", "INVENTORY", "EQUIPMENT", "MERCHANT_CASH_ADVANCE")
TERMS: tuple[int, ...] = (3, 6, 12, 18, 24, 36)


@dataclass(frozen=True)
class RegionEffects:
    risk: np.ndarray  # (N_REGIONS,) additive log-odds
    growth: np.ndarray  # (N_REGIONS,) daily relative growth
    shock_day: np.ndarray  # (N_REGIONS,) day index of a regional shock, -1 for none
    shock_factor: np.ndarray  # (N_REGIONS,) revenue multiplier after the shock


def region_effects(seed: int) -> RegionEffects:
    """Region-level ground truth; two regions suffer a sudden downturn."""
    rng = np.random.default_rng([seed, 0xBEEF])
    shock_day = np.full(N_REGIONS, -1, dtype=np.int64)
    shock_factor = np.ones(N_REGIONS)
    hit = rng.choice(N_REGIONS, size=2, replace=False)
    shock_day[hit] = rng.integers(HISTORY_DAYS - 60, HISTORY_DAYS - 7, size=2)
    shock_factor[hit] = rng.uniform(0.45, 0.7, size=2)
    return RegionEffects(
        risk=rng.normal(0.0, 0.25, N_REGIONS),
        growth=rng.normal(0.0, 0.0008, N_REGIONS),
        shock_day=shock_day,
        shock_factor=shock_factor,
    )


def default_logit(
    *,
    volatility_excess: np.ndarray,
    growth: np.ndarray,
    shocked: np.ndarray,
    refund_excess: np.ndarray,
    utilisation: np.ndarray,
    delinquencies: np.ndarray,
    industry_risk: np.ndarray,
    region_risk: np.ndarray,
    age_years: np.ndarray,
    amount_to_revenue: np.ndarray,
    term_months: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:
    """The hidden default process: log-odds of default within the term."""
    logit: np.ndarray = (
        -4.1
        + 1.6 * volatility_excess
        - 900.0 * growth
        + 1.3 * shocked
        + 12.0 * refund_excess
        + 1.4 * np.nan_to_num(utilisation, nan=0.5)
        + 0.45 * np.nan_to_num(delinquencies, nan=1.0)
        + industry_risk
        + region_risk
        - 0.35 * np.log(np.maximum(age_years, 0.05))
        + 0.55 * np.log(np.maximum(amount_to_revenue, 0.02))
        + 0.015 * term_months
        + noise
    )
    return logit
