"""The scoring engine: everything a replica does, without Ray.

One call scores a whole batch: one batched online-store read, request-time
features, one kernel call, one vectorized policy call. Anything that can be
done per load (column maps, reason tables, parity gate) is done in
``__init__``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features import (
    MATRIX_COLUMNS,
    REQUEST_COLUMNS,
    FeatureBatch,
    FeatureError,
    OnlineReader,
    request_features,
)
from services.models import ModelArtifact
from services.policy import Policy, PolicyInputs
from services.scoring.batch import OK, RequestBatch, ResponseBatch

DEADLINE_EXCEEDED = 4  # grpc.StatusCode.DEADLINE_EXCEEDED
TOP_K = 4


@dataclass(frozen=True)
class _Columns:
    """Where each model input column comes from: the feature matrix or the request features."""

    dst_from_features: npt.NDArray[np.intp]
    src_features: npt.NDArray[np.intp]
    dst_from_request: npt.NDArray[np.intp]
    src_request: npt.NDArray[np.intp]


def _column_plan(model_features: tuple[str, ...]) -> _Columns:
    fidx = {c: i for i, c in enumerate(MATRIX_COLUMNS)}
    ridx = {c: i for i, c in enumerate(REQUEST_COLUMNS)}
    df, sf, dr, sr = [], [], [], []
    for j, name in enumerate(model_features):
        if name in fidx:
            df.append(j)
            sf.append(fidx[name])
        elif name in ridx:
            dr.append(j)
            sr.append(ridx[name])
        else:
            from services.errors import ModelError

            raise ModelError(f"model needs feature {name!r}, which the feature layer does not serve")
    a = np.asarray
    return _Columns(a(df, np.intp), a(sf, np.intp), a(dr, np.intp), a(sr, np.intp))


class ScoringEngine:
    def __init__(self, reader: OnlineReader, model: ModelArtifact, policy: Policy, max_feature_age_s: float) -> None:
        self._reader = reader
        self._model = model
        self._policy = policy
        self._max_age = max_feature_age_s
        self._plan = _column_plan(model.feature_names)
        self._rev30 = MATRIX_COLUMNS.index("rev_mean_30d")
        self._apps_1h = MATRIX_COLUMNS.index("apps_1h")
        self._apps_24h = MATRIX_COLUMNS.index("apps_24h")
        self.model_version = model.version
        self.policy_version = policy.version

    def score(self, batch: RequestBatch, now: float | None = None) -> ResponseBatch:
        now = time.time() if now is None else now
        n = len(batch)
        live = batch.deadline > now
        ids = batch.ids()
        degraded = False
        try:
            feats = self._reader.read(ids)
        except FeatureError:
            # The online store is down or slow: decide conservatively rather than fail.
            degraded = True
            feats = FeatureBatch(
                matrix=np.full((n, len(MATRIX_COLUMNS)), np.nan, dtype=np.float32),
                tags=np.zeros((n, 0), dtype=np.uint8),
                found=np.zeros(n, dtype=bool),
                event_ts=np.zeros(n, dtype=np.int64),
            )
        rev30 = feats.matrix[:, self._rev30].astype(np.float64)
        to_base = self._policy.to_base_minor
        req = request_features(
            amount_minor=np.rint(to_base(batch.amount_minor, batch.currency)).astype(np.int64),
            declared_revenue_minor=to_base(batch.declared_revenue_minor, batch.currency),
            term_months=batch.term_months.astype(np.int32),
            channel_code=batch.channel.astype(np.int32),
            product_code=batch.product.astype(np.int32),
            rev_mean_30d=rev30,
        )
        x = np.empty((n, len(self._model.feature_names)), dtype=np.float32)
        p = self._plan
        x[:, p.dst_from_features] = feats.matrix[:, p.src_features]
        x[:, p.dst_from_request] = req[:, p.src_request]

        pd = np.full(n, np.nan)
        k = TOP_K
        rf = np.full((n, k), -1, dtype=np.int32)
        rc = np.zeros((n, k))
        scorable = live & feats.found & (not degraded)
        if scorable.any():
            rows = np.flatnonzero(scorable)
            xs = x if len(rows) == n else np.ascontiguousarray(x[rows])
            prob, fidx, contrib = self._model.ensemble.predict_with_reasons(xs, k)
            pd[rows], rf[rows], rc[rows] = prob, fidx, contrib

        age = feats.age_s(now).astype(np.float32)
        stale = ~np.isnan(age) & (age > self._max_age)
        decided = self._policy.decide(
            PolicyInputs(
                pd=pd,
                known=feats.found,
                stale=stale,
                monthly_revenue_base_minor=rev30 * 30.0 * 100.0,
                amount_minor=batch.amount_minor,
                currency=batch.currency,
                term_months=batch.term_months,
                product=batch.product,
                apps_1h=feats.matrix[:, self._apps_1h].astype(np.float64),
                apps_24h=feats.matrix[:, self._apps_24h].astype(np.float64),
                model_reason_features=rf,
                model_reason_contrib=rc,
                degraded=degraded,
            )
        )
        status = np.where(live, OK, DEADLINE_EXCEEDED).astype(np.int8)
        return ResponseBatch(
            status=status,
            decision=decided.decision,
            approved_minor=decided.approved_minor,
            apr_bps=decided.apr_bps,
            grade=decided.grade,
            pd=pd,
            reason=decided.reason,
            reason_contrib=decided.reason_contrib,
            feature_age_s=age,
            stale=stale,
            degraded=np.full(n, degraded),
            model_version=self.model_version,
            policy_version=self.policy_version,
            grade_letters=self._policy.grade_letters,
            reason_table=self._policy.reason_table,
        )

    def close(self) -> None:
        self._reader.close()
