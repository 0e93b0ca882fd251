"""The unit that decides: a model and a policy, from gathered inputs to decision columns.

Per load the decider resolves where each model input comes from (the feature matrix or
the request-time features); per batch it computes the request features, runs the kernel
once (PD and reason codes) and makes the policy's one call, then writes the decision
columns of the records. Items the policy's degraded modes refuse (an input missing,
mode ``unavailable``) get status ``UNAVAILABLE`` instead of a decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features import MATRIX_COLUMNS, REQUEST_COLUMNS, request_features
from services.errors import ModelError
from services.models import ModelArtifact
from services.policy import Policy, PolicyInputs
from services.schema.codes import Code
from services.schema.columns import MAX_REASONS
from services.schema.records import Rows
from services.scoring.gather import Gathered
from services.scoring.stages import StageTimer

TOP_K = 4  # model reasons the kernel ranks per decision
_REV30 = MATRIX_COLUMNS.index("rev_mean_30d")
_APPS_1H = MATRIX_COLUMNS.index("apps_1h")
_APPS_24H = MATRIX_COLUMNS.index("apps_24h")


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
            raise ModelError(f"model needs feature {name!r}, which the feature layer does not serve")
    a = np.asarray
    return _Columns(a(df, np.intp), a(sf, np.intp), a(dr, np.intp), a(sr, np.intp))


class Decider:
    def __init__(self, model: ModelArtifact, policy: Policy, max_feature_age_s: float) -> None:
        self._model = model
        self._policy = policy
        self._max_age = max_feature_age_s
        self._plan = _column_plan(model.feature_names)
        self.model_version = model.version
        self.policy_version = policy.version
        self.reason_table = policy.reason_table
        self.reason_width = policy.reason_columns(TOP_K)
        # Grade index -> the letter as stored; index -1 (no grade) reads the blank last slot.
        self._letters = np.array([*policy.grade_letters, ""], dtype="S4")

    def decide(
        self, requests: Rows, gathered: Gathered, now: float, timer: StageTimer, out: Rows, *, reasons: bool = True,
    ) -> None:
        """Decide the requests ``requests`` (records), writing the decision columns of ``out``.

        ``reasons=False`` (a shadow: its reasons are not on record) scores without the
        model's reasons, which cost the kernel about as much again as the score; decision,
        limit, price and grade do not depend on them."""
        feats = gathered.features
        with timer("kernel"):
            pd, model_reasons, contrib = self._score(requests, gathered, TOP_K if reasons else 0)
        with timer("policy"):
            age = feats.age_s(now).astype(np.float32)
            stale = ~np.isnan(age) & (age > self._max_age)
            d = self._policy.decide(
                PolicyInputs(
                    pd=pd,
                    known=feats.found,
                    stale=stale,
                    monthly_revenue_base_minor=feats.matrix[:, _REV30].astype(np.float64) * 30.0 * 100.0,
                    amount_minor=requests["amount_minor"],
                    currency=requests["currency"],
                    term_months=requests["term_months"],
                    product=requests["product"],
                    apps_1h=feats.matrix[:, _APPS_1H].astype(np.float64),
                    apps_24h=feats.matrix[:, _APPS_24H].astype(np.float64),
                    model_reason_features=model_reasons,
                    model_reason_contrib=contrib,
                    degraded=gathered.features_missing,
                    velocity_missing=gathered.velocity_missing,
                    features=feats.matrix,
                    tag_words=feats.tag_words(),
                )
            )
            out["decision"] = d.decision
            out["approved_minor"] = d.approved_minor
            out["apr_bps"] = d.apr_bps
            out["risk_grade"] = self._letters[d.grade]
            out["pd"] = pd
            _reasons_into(out, d.reason, d.reason_contrib)
            out["feature_age_s"] = age
            out["stale"] = stale
            out["degraded"] = d.degraded
            # What the policy's degraded modes refuse: not decided, so nothing is saved for it.
            out["status"][d.unavailable] = Code.UNAVAILABLE
            out["model_version"] = self.model_version.encode()
            out["policy_version"] = self.policy_version.encode()

    def _score(
        self, requests: Rows, gathered: Gathered, top_k: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """PD and the model's ``top_k`` reasons for the rows the model can score (NaN / -1 elsewhere)."""
        feats = gathered.features
        n = len(requests)
        cur = requests["currency"]
        to_base = self._policy.fx.to_base_minor
        req = request_features(
            amount_minor=np.rint(to_base(requests["amount_minor"], cur)).astype(np.int64),
            declared_revenue_minor=to_base(requests["declared_revenue_minor"], cur),
            term_months=requests["term_months"].astype(np.int32),
            channel_code=requests["channel"].astype(np.int32),
            product_code=requests["product"].astype(np.int32),
            rev_mean_30d=feats.matrix[:, _REV30].astype(np.float64),
        )
        p = self._plan
        x = np.empty((n, len(self._model.feature_names)), dtype=np.float32)
        x[:, p.dst_from_features] = feats.matrix[:, p.src_features]
        x[:, p.dst_from_request] = req[:, p.src_request]
        pd = np.full(n, np.nan)
        rf = np.full((n, top_k), -1, dtype=np.int32)
        rc = np.zeros((n, top_k))
        scorable = feats.found & (not gathered.features_missing)
        if scorable.any():
            idx = np.flatnonzero(scorable)
            xs = x if len(idx) == n else np.ascontiguousarray(x[idx])
            if not top_k:
                pd[idx] = self._model.ensemble.predict(xs)
                return pd, rf, rc
            # A model of fewer than TOP_K inputs has fewer reasons to give; the rest stay "none".
            k = min(top_k, self._model.ensemble.n_features)
            prob, fidx, c = self._model.ensemble.predict_with_reasons(xs, k)
            pd[idx] = prob
            rf[idx, :k], rc[idx, :k] = fidx[:, :k], c[:, :k]
        return pd, rf, rc


def _reasons_into(out: Rows, reason: npt.NDArray[np.int16], contrib: npt.NDArray[np.float32]) -> None:
    """The policy's reason columns into the record's ``MAX_REASONS`` slots, order kept.

    A policy with more reason columns than slots keeps the first ``MAX_REASONS`` reasons
    given (policy reasons, then rules, then model reasons, as they are reported).
    """
    width = reason.shape[1]
    if width <= MAX_REASONS:
        out["reason"][:, :width] = reason
        out["reason_contrib"][:, :width] = contrib
        return
    order = np.argsort(reason < 0, axis=1, kind="stable")[:, :MAX_REASONS]
    out["reason"] = np.take_along_axis(reason, order, axis=1)
    out["reason_contrib"] = np.take_along_axis(contrib, order, axis=1)
