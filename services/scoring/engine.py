"""The scoring engine: everything a replica does, without Ray.

One call decides a whole batch, stage by stage (``services.scoring.stages.STAGES``):
the idempotency lookup (replays, repeats, reused ids), one batched online-store read with
the velocity update (``gather``), the decider's kernel call and its one policy call
(``decider``), and one idempotency write. Anything that can be done per load (column
maps, reason tables, the parity gate) is done in ``__init__``.

Every decision is one ``DECISION_DTYPE`` record: fresh decisions and replays of earlier
ones take the same path into the response.
"""

from __future__ import annotations

import os
import time

import numpy as np
import numpy.typing as npt

from features import IdempotencyStore, OnlineReader, VelocityRecorder
from features.stores import NoIdempotency
from services.models import ModelArtifact
from services.policy import Policy
from services.schema.codes import Code
from services.schema.records import DecisionBatch, RequestBatch, Rows, fingerprints
from services.scoring.decider import Decider
from services.scoring.gather import FeatureStage
from services.scoring.replays import Plan, Replays
from services.scoring.stages import StageTimer
from services.telemetry import NullTelemetry


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
        self._features = FeatureStage(reader, velocity)
        self._decider = Decider(model, policy, max_feature_age_s)
        self._replays = Replays(store or NoIdempotency(), policy.version, policy.reason_table)
        self.model_version = model.version
        self.policy_version = policy.version
        # Decision ids: a per-replica prefix and a counter (no UUID per decision).
        self._id_prefix = f"d{os.urandom(5).hex()}"
        self._next_id = 0

    def score(self, batch: RequestBatch, now: float | None = None) -> DecisionBatch:
        if batch.trace:
            # Link this batch's span to every sampled request it carries.
            with self._tel.span("score_batch", links=batch.trace.split("\n"), size=len(batch)):
                return self._score(batch, now)
        return self._score(batch, now)

    def _score(self, batch: RequestBatch, now: float | None) -> DecisionBatch:
        now = time.time() if now is None else now
        timer = StageTimer()
        requests = batch.rows
        app_ids = batch.application_ids()
        asked = fingerprints(requests)
        with timer("idempotency_lookup"):
            plan = self._replays.plan(app_ids, asked, requests["deadline"] <= now)
        fresh = np.flatnonzero(plan.fresh)
        if fresh.size:
            self._decide(requests, plan, fresh, now, timer)
            plan.rows["fingerprint"][fresh] = asked[fresh]
            with timer("idempotency_save"):
                self._replays.save(plan, fresh, app_ids)
        plan.finish()
        rows = plan.rows
        # Echo what was asked: the id and the currency the limit is in.
        rows["application_id"] = requests["application_id"]
        rows["currency"] = requests["currency"]
        return DecisionBatch(rows, self._replays.reason_table(plan), _message(rows), timer.seconds)

    def _decide(
        self, requests: Rows, plan: Plan, fresh: npt.NDArray[np.intp], now: float, timer: StageTimer
    ) -> None:
        asked = requests[fresh]
        with timer("feature_read"):
            gathered = self._features.gather(asked["merchant_id"].astype("U64").tolist(), now)
        out = plan.rows[fresh]
        self._decider.decide(asked, gathered, now, timer, out)
        out["application_id"] = asked["application_id"]
        out["currency"] = asked["currency"]
        first = self._next_id
        self._next_id += len(fresh)
        out["decision_id"] = [f"{self._id_prefix}-{k:x}".encode() for k in range(first, first + len(fresh))]
        plan.rows[fresh] = out

    def close(self) -> None:
        self._features.close()
        self._replays.close()


def _message(rows: Rows) -> str:
    """Why the refused items of a batch were refused (one message per batch)."""
    status = rows["status"]
    if (status == Code.ALREADY_EXISTS).any():
        return "application_id was already used for a different request within the idempotency window"
    if (status == Code.DEADLINE_EXCEEDED).any():
        return "deadline exceeded before scoring"
    return ""
