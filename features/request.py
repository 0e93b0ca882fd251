"""Request-time features, computed once per batch with numpy.

The same definitions are registered in Feast as the on-demand feature view
``request_features`` (see ``features.feast_repo``) so the feature catalogue
documents them; a test checks that both produce identical values.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from features.catalog import REQUEST_COLUMNS

F64 = npt.NDArray[np.float64]


def request_features(
    *,
    amount_minor: npt.NDArray[np.int64],
    declared_revenue_minor: F64,
    term_months: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    channel_code: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    product_code: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    rev_mean_30d: npt.NDArray[np.float32] | F64,
) -> npt.NDArray[np.float32]:
    """Return an ``(n, len(REQUEST_COLUMNS))`` float32 matrix in ``REQUEST_COLUMNS`` order.

    ``amount_minor`` is in the population's base currency; ``declared_revenue_minor``
    is NaN where the merchant declared nothing; ``rev_mean_30d`` is NaN for unknown
    merchants.
    """
    n = amount_minor.shape[0]
    out = np.empty((n, len(REQUEST_COLUMNS)), dtype=np.float32)
    amount = amount_minor.astype(np.float64) / 100.0
    monthly = np.asarray(rev_mean_30d, dtype=np.float64) * 30.0
    with np.errstate(divide="ignore", invalid="ignore"):
        out[:, 0] = amount / np.maximum(monthly, 1.0)
        declared = declared_revenue_minor / 100.0
        out[:, 1] = np.where(declared > 0, amount / declared, np.nan)
    out[:, 2] = term_months
    out[:, 3] = channel_code
    out[:, 4] = product_code
    return out


def request_features_rows(rows: dict[str, list[float]]) -> dict[str, list[float]]:
    """The same transformation on Feast's python-mode ODFV input (dict of lists)."""
    n = len(rows["amount_minor"])
    m = request_features(
        amount_minor=np.asarray(rows["amount_minor"], dtype=np.int64),
        declared_revenue_minor=np.asarray(
            [np.nan if v is None else float(v) for v in rows["declared_monthly_revenue_minor"]],
            dtype=np.float64,
        ),
        term_months=np.asarray(rows["term_months"], dtype=np.int64),
        channel_code=np.asarray(rows["channel_code"], dtype=np.int64),
        product_code=np.asarray(rows["product_code"], dtype=np.int64),
        rev_mean_30d=np.asarray(
            [np.nan if v is None else float(v) for v in rows["rev_mean_30d"]], dtype=np.float64
        ),
    )
    return {c: [float(m[i, k]) for i in range(n)] for k, c in enumerate(REQUEST_COLUMNS)}
