"""The scoring engine: everything a replica does, without Ray.

One call decides a whole batch: one idempotency lookup, one batched
online-store read, request-time features, one kernel call, one vectorized
policy call, one idempotency write. Anything that can be done per load (column
maps, reason tables, the parity gate) is done in ``__init__``.

Every decision is assembled as one fixed-size record (see
``services.scoring.records.record_dtype``): fresh decisions and replays of
earlier ones take the same path into the response.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features import (
    MATRIX_COLUMNS,
    REQUEST_COLUMNS,
    FeatureBatch,
    FeatureError,
    IdempotencyStore,
    OnlineReader,
    VelocityRecorder,
    request_features,
)
from features.stores import NoIdempotency
from services.errors import ModelError
from services.models import ModelArtifact
from services.policy import Policy, PolicyInputs
from services.scoring.batch import OK, STAGES, RequestBatch, ResponseBatch
from services.scoring.records import fingerprints, record_dtype
from services.telemetry import NullTelemetry

log = logging.getLogger(__name__)
DEADLINE_EXCEEDED = 4  # grpc.StatusCode values
ALREADY_EXISTS = 6
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
            raise ModelError(f"model needs feature {name!r}, which the feature layer does not serve")
    a = np.asarray
    return _Columns(a(df, np.intp), a(sf, np.intp), a(dr, np.intp), a(sr, np.intp))


class ScoringEngine:
    def __init__(
        self,
        reader: OnlineReader,
        model: ModelArtifact,
        policy: Policy,
        max_feature_age_s: float,
        *,
        store: IdempotencyStore | None = None,
        telemetry: NullTelemetry | None = None,
        velocity: VelocityRecorder | None = None,
    ) -> None:
        self._tel = telemetry or NullTelemetry()
        self._velocity = velocity
        self._reader = reader
        self._model = model
        self._policy = policy
        self._max_age = max_feature_age_s
        self._store: IdempotencyStore = store or NoIdempotency()
        self._plan = _column_plan(model.feature_names)
        self._rev30 = MATRIX_COLUMNS.index("rev_mean_30d")
        self._apps_1h = MATRIX_COLUMNS.index("apps_1h")
        self._apps_24h = MATRIX_COLUMNS.index("apps_24h")
        self.model_version = model.version
        self.policy_version = policy.version
        self._reasons = policy.reason_columns(TOP_K)
        self._dtype = record_dtype(self._reasons)
        self._store.put_reasons(policy.version, policy.reason_table)
        # Decision ids: a per-replica prefix and a counter (no UUID per decision).
        self._id_prefix = f"d{os.urandom(5).hex()}"
        self._next_id = 0

    # -- the batch path ------------------------------------------------------
    def score(self, batch: RequestBatch, now: float | None = None) -> ResponseBatch:
        if batch.trace:
            # Link this batch's span to every sampled request it carries.
            with self._tel.span("score_batch", links=batch.trace.split("\n"), size=len(batch)):
                return self._score(batch, now)
        return self._score(batch, now)

    def _score(self, batch: RequestBatch, now: float | None) -> ResponseBatch:
        now = time.time() if now is None else now
        stages = np.zeros(len(STAGES), dtype=np.float32)
        n = len(batch)
        app_ids = batch.app_ids()
        merchants = batch.ids()
        fp = fingerprints(
            merchants,
            batch.amount_minor,
            batch.currency,
            batch.term_months,
            batch.product,
            batch.channel,
            batch.declared_revenue_minor,
        )
        status = np.zeros(n, dtype=np.int8)
        status[batch.deadline <= now] = DEADLINE_EXCEEDED
        rec = np.zeros(n, dtype=self._dtype)
        rec["reason"] = -1
        rec["grade"] = -1

        # Earlier decisions for these application ids, and repeats inside the batch.
        t = time.perf_counter()
        stored = self._lookup(app_ids)
        stages[0] = time.perf_counter() - t
        first: dict[str, int] = {}
        copy_of = np.full(n, -1, dtype=np.intp)
        replayed = np.zeros(n, dtype=bool)
        for i, a in enumerate(app_ids):
            j: int = first.setdefault(a, i)
            if j != i:
                copy_of[i] = j
            elif a in stored:
                rec[i] = np.frombuffer(stored[a], dtype=self._dtype)[0]
                replayed[i] = True
        mismatch = replayed & (rec["fp"] != fp)
        status[mismatch] = ALREADY_EXISTS
        fresh = (status == OK) & ~replayed & (copy_of < 0)

        if fresh.any():
            rows = np.flatnonzero(fresh)
            sub = rec[rows]
            self._decide(batch, rows, [merchants[i] for i in rows], now, sub, stages)
            sub["fp"] = fp[rows]
            rec[rows] = sub
            t = time.perf_counter()
            lost = self._save([app_ids[i] for i in rows], sub)
            stages[4] = time.perf_counter() - t
            for i in rows.tolist():
                won = lost.get(app_ids[i])
                if won is not None:  # another replica decided it first: answer with that
                    rec[i] = np.frombuffer(won, dtype=self._dtype)[0]
                    replayed[i] = True
        dup = copy_of >= 0
        if dup.any():
            rec[dup] = rec[copy_of[dup]]
            status[dup] = status[copy_of[dup]]
        resp = self._response(rec, status, replayed)
        resp.stage_s[:] = stages
        return resp

    def _decide(  # noqa: PLR0917 -- internal, called once
        self,
        batch: RequestBatch,
        rows: npt.NDArray[np.intp],
        merchants: list[str],
        now: float,
        out: np.ndarray,
        stages: npt.NDArray[np.float32],
    ) -> None:
        """Fresh decisions for ``rows`` of ``batch``, written into the records ``out``."""
        n = len(rows)
        degraded = False
        t = time.perf_counter()
        counts = None
        if self._velocity is not None:
            # Count this application (one round trip for the batch); the counts that
            # come back include it, so the velocity rule fires on the n-th application
            # in the window, across every replica, whatever the reader cached.
            try:
                counts = self._velocity.record(merchants, now)
            except FeatureError as exc:
                log.warning("velocity update failed: %s", exc)
        try:
            feats = self._reader.read(merchants)
        except FeatureError as exc:
            # The online store is down or slow: decide conservatively rather than fail.
            log.warning("online store unavailable, deciding in degraded mode: %s", exc)
            degraded = True
            feats = FeatureBatch(
                matrix=np.full((n, len(MATRIX_COLUMNS)), np.nan, dtype=np.float32),
                tags=np.zeros((n, 0), dtype=np.uint8),
                found=np.zeros(n, dtype=bool),
                event_ts=np.zeros(n, dtype=np.int64),
            )
        cur = batch.currency[rows]
        rev30 = feats.matrix[:, self._rev30].astype(np.float64)
        to_base = self._policy.to_base_minor
        req = request_features(
            amount_minor=np.rint(to_base(batch.amount_minor[rows], cur)).astype(np.int64),
            declared_revenue_minor=to_base(batch.declared_revenue_minor[rows], cur),
            term_months=batch.term_months[rows].astype(np.int32),
            channel_code=batch.channel[rows].astype(np.int32),
            product_code=batch.product[rows].astype(np.int32),
            rev_mean_30d=rev30,
        )
        if counts is not None and not degraded:
            feats.matrix[:, self._apps_1h] = counts.apps_1h
            feats.matrix[:, self._apps_24h] = counts.apps_24h
        stages[1] = time.perf_counter() - t
        t = time.perf_counter()
        x = np.empty((n, len(self._model.feature_names)), dtype=np.float32)
        p = self._plan
        x[:, p.dst_from_features] = feats.matrix[:, p.src_features]
        x[:, p.dst_from_request] = req[:, p.src_request]

        pd = np.full(n, np.nan)
        rf = np.full((n, TOP_K), -1, dtype=np.int32)
        rc = np.zeros((n, TOP_K))
        scorable = feats.found & (not degraded)
        if scorable.any():
            idx = np.flatnonzero(scorable)
            xs = x if len(idx) == n else np.ascontiguousarray(x[idx])
            prob, fidx, contrib = self._model.ensemble.predict_with_reasons(xs, TOP_K)
            pd[idx], rf[idx], rc[idx] = prob, fidx, contrib

        stages[2] = time.perf_counter() - t
        t = time.perf_counter()
        age = feats.age_s(now).astype(np.float32)
        stale = ~np.isnan(age) & (age > self._max_age)
        fired = None if degraded else self._policy.fire_rules(feats.matrix, feats.tag_words())
        d = self._policy.decide(
            PolicyInputs(
                pd=pd,
                known=feats.found,
                stale=stale,
                monthly_revenue_base_minor=rev30 * 30.0 * 100.0,
                amount_minor=batch.amount_minor[rows],
                currency=cur,
                term_months=batch.term_months[rows],
                product=batch.product[rows],
                apps_1h=feats.matrix[:, self._apps_1h].astype(np.float64),
                apps_24h=feats.matrix[:, self._apps_24h].astype(np.float64),
                model_reason_features=rf,
                model_reason_contrib=rc,
                degraded=degraded,
                rules_fired=fired,
            )
        )
        out["decision"] = d.decision
        out["approved"] = d.approved_minor
        out["apr"] = d.apr_bps
        out["grade"] = d.grade
        out["pd"] = pd
        out["reason"] = d.reason
        out["contrib"] = d.reason_contrib
        out["age"] = age
        out["stale"] = stale
        out["degraded"] = degraded
        first = self._next_id
        self._next_id += n
        out["decision_id"] = [f"{self._id_prefix}-{k:x}".encode() for k in range(first, first + n)]
        out["model"] = self.model_version.encode()
        out["policy"] = self.policy_version.encode()
        stages[3] = time.perf_counter() - t

    # -- idempotency store (failures degrade to "no guarantee", never to no answer) --
    def _lookup(self, app_ids: list[str]) -> dict[str, bytes]:
        try:
            return self._store.lookup(app_ids)
        except FeatureError as exc:
            log.warning("idempotency lookup failed, deciding afresh: %s", exc)
            return {}

    def _save(self, app_ids: list[str], records: np.ndarray) -> dict[str, bytes]:
        try:
            return self._store.save(app_ids, [r.tobytes() for r in records])
        except FeatureError as exc:
            log.warning("idempotency save failed: %s", exc)
            return {}

    # -- records -> response -------------------------------------------------
    def _response(
        self, rec: np.ndarray, status: npt.NDArray[np.int8], replayed: npt.NDArray[np.bool_]
    ) -> ResponseBatch:
        table = list(self._policy.reason_table)
        reason = rec["reason"].copy()
        versions: list[tuple[str, str]] = [(self.model_version, self.policy_version)]
        version = np.zeros(len(rec), dtype=np.int8)
        if replayed.any():
            for i in np.flatnonzero(replayed):
                pair = (rec["model"][i].decode(), rec["policy"][i].decode())
                if pair[1] != self.policy_version:
                    reason[i] = self._remap(reason[i], pair[1], table)
                if pair not in versions:
                    versions.append(pair)
                version[i] = versions.index(pair)
        ok = status == OK
        ids = np.where(ok, rec["decision_id"], b"").tolist()
        message = ""
        if (status == ALREADY_EXISTS).any():
            message = "application_id was already used for a different request within the idempotency window"
        elif (status == DEADLINE_EXCEEDED).any():
            message = "deadline exceeded before scoring"
        return ResponseBatch(
            status=status,
            decision=rec["decision"],
            approved_minor=rec["approved"],
            apr_bps=rec["apr"],
            grade=rec["grade"],
            pd=rec["pd"],
            reason=reason,
            reason_contrib=rec["contrib"],
            feature_age_s=rec["age"],
            stale=rec["stale"],
            degraded=rec["degraded"],
            version=version,
            decision_ids=b"\n".join(ids),
            versions=tuple(versions),
            grade_letters=self._policy.grade_letters,
            reason_table=tuple(table),
            message=message,
        )

    def _remap(
        self, row: npt.NDArray[np.int16], policy_version: str, table: list[tuple[str, str]]
    ) -> npt.NDArray[np.int16]:
        """Reason indices of another policy version's table -> indices into ``table`` (extended as needed)."""
        old = self._store.reasons(policy_version) or ()
        out = np.full_like(row, -1)
        codes = [c for c, _ in table]
        for k, r in enumerate(row):
            if 0 <= r < len(old):
                entry = old[r]
                if entry[0] not in codes:
                    table.append(entry)
                    codes.append(entry[0])
                out[k] = codes.index(entry[0])
        return out

    def close(self) -> None:
        self._reader.close()
        self._store.close()
        if self._velocity is not None:
            self._velocity.close()
