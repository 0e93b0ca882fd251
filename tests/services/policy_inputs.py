"""One merchant's worth of ``PolicyInputs``, ``n`` times: the decision tables' starting point."""

from __future__ import annotations

import numpy as np

from services.policy import PolicyInputs, currency_index


def policy_inputs(n: int, **over: object) -> PolicyInputs:
    """A known, fresh, low-PD merchant (100,000.00 CNY a month) asking 50,000.00 CNY of
    working capital over 12 months, no velocity, three model reasons; ``over`` replaces fields."""
    base: dict[str, object] = {
        "pd": np.full(n, 0.01),
        "known": np.ones(n, dtype=bool),
        "stale": np.zeros(n, dtype=bool),
        "monthly_revenue_base_minor": np.full(n, 10_000_000.0),
        "amount_minor": np.full(n, 5_000_000, dtype=np.int64),
        "currency": np.full(n, currency_index("CNY"), dtype=np.int8),
        "term_months": np.full(n, 12, dtype=np.int16),
        "product": np.full(n, 1, dtype=np.int8),  # WORKING_CAPITAL
        "apps_1h": np.zeros(n),
        "apps_24h": np.zeros(n),
        "model_reason_features": np.tile(np.array([[0, 2, 1, -1]], dtype=np.int32), (n, 1)),
        "model_reason_contrib": np.tile(np.array([[0.8, 0.3, 0.1, 0.0]]), (n, 1)),
    }
    base.update(over)
    return PolicyInputs(**base)  # type: ignore[arg-type]
