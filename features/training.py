"""Training data: historical applications joined with the features as of application time.

All applications in the synthetic population are dated at the snapshot, so the
point-in-time join reduces to a join on ``merchant_id`` with the offline
tables; request-time features come from the same ``features.request`` code the
replicas run, so training and serving cannot disagree.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from features import catalog
from features.population import world
from features.population.generate import raw_dir
from features.request import request_features
from features.settings import FeatureSettings

# What the model sees, in this order: batch features (velocity is a policy
# signal, not a model input: there is no history of it to train on) and the
# request-time features.
MODEL_COLUMNS: tuple[str, ...] = (
    *catalog.FLOWS.field_names,
    *catalog.PROFILE.field_names,
    *catalog.BUREAU.field_names,
    *catalog.REQUEST_COLUMNS,
)
LABEL = "defaulted"


def training_frame(settings: FeatureSettings) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    """``(X, y)``: float32 ``(n, len(MODEL_COLUMNS))`` and 0/1 labels, ordered by application id."""
    off = settings.offline_dir
    apps = pl.scan_parquet(raw_dir(settings.data_dir) / "applications" / "*.parquet")
    frame = (
        apps.join(pl.scan_parquet(off / "merchant_flows.parquet").drop(_STAMPS), on="merchant_id", how="left")
        .join(pl.scan_parquet(off / "merchant_profile.parquet").drop(_STAMPS), on="merchant_id", how="left")
        .join(pl.scan_parquet(off / "merchant_bureau.parquet").drop(_STAMPS), on="merchant_id", how="left")
        .sort("application_id")
        .collect(engine="streaming")
    )
    channel = {c: i + 1 for i, c in enumerate(world.CHANNELS)}
    product = {p: i + 1 for i, p in enumerate(world.PRODUCTS)}
    req = request_features(
        amount_minor=frame["amount_minor"].to_numpy(),
        declared_revenue_minor=frame["declared_monthly_revenue_minor"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
        term_months=frame["term_months"].to_numpy(),
        channel_code=frame["channel"].replace_strict(channel, return_dtype=pl.Int64).to_numpy(),
        product_code=frame["product"].replace_strict(product, return_dtype=pl.Int64).to_numpy(),
        rev_mean_30d=frame["rev_mean_30d"].cast(pl.Float64).fill_null(np.nan).to_numpy(),
    )
    batch_cols = MODEL_COLUMNS[: -len(catalog.REQUEST_COLUMNS)]
    x = np.empty((frame.height, len(MODEL_COLUMNS)), dtype=np.float32)
    x[:, : len(batch_cols)] = (
        frame.select([pl.col(c).cast(pl.Float32) for c in batch_cols]).fill_null(np.nan).to_numpy()
    )
    x[:, len(batch_cols) :] = req
    return x, frame[LABEL].cast(pl.Int8).to_numpy()


_STAMPS = ["event_timestamp", "created_timestamp"]
