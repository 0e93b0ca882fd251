"""The scoring engine: everything a replica does, without Ray.

One call decides a whole batch, stage by stage (``services.scoring.stages.STAGES``):
the idempotency lookup (replays, repeats, reused ids), one batched online-store read with
the velocity update (``gather``), the decider's kernel call and its one policy call
(``decider``), the operator controls over the decider's outputs (``controls``: compiled
per version of the set, applied per batch), the exposure caps' reservation of the approvals
(``exposure``: one atomic store call; reservations not answered as granted are released
after the save), and one idempotency write. Anything that can
be done per load (column maps, reason tables, the parity gate) is done in ``__init__``.

Every decision is one ``DECISION_DTYPE`` record: fresh decisions and replays of earlier
ones take the same path into the response. With a decision log, every item of the batch
(answered or refused, replays flagged) is handed to it before the answer goes out, and no
batch is decided while the log can take nothing more.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from features import FeatureBatch, FeatureError, IdempotencyStore, OnlineReader, VelocityRecorder
from features.controls import ControlCache
from features.exposure import ExposureState
from features.stores import NoIdempotency
from services.errors import ConfigError
from services.models import ModelArtifact
from services.policy import Policy
from services.policy.config import DegradedInput
from services.schema.codes import Code
from services.schema.records import DecisionBatch, RequestBatch, Rows, fingerprints
from services.scoring import controls as ctl
from services.scoring.decider import Decider
from services.scoring.exposure import ExposureStage, Held
from services.scoring.gather import FeatureStage, Gathered
from services.scoring.replays import Plan, Replays
from services.scoring.stages import StageTimer
from services.scoring.variants import CHAMPION, Arms, Variant, Variants, take
from services.telemetry import NullTelemetry

if TYPE_CHECKING:  # the log (and pyarrow) load only where one is opened
    from services.decisionlog.writer import DecisionLog

log = logging.getLogger(__name__)


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
        decision_log: DecisionLog | None = None,
        controls: ControlCache | None = None,
        vocabulary: ctl.Vocabulary | None = None,
        exposure: ExposureState | None = None,
        arms: Arms | None = None,
    ) -> None:
        self._log = decision_log
        self._tel = telemetry or NullTelemetry()
        self._features = FeatureStage(reader, velocity)
        arms = arms or Arms()
        self._variants = Variants(
            Variant(CHAMPION, arms.bundle, Decider(model, policy, max_feature_age_s), policy),
            [Variant(a.name, a.bundle, Decider(a.model, a.policy, max_feature_age_s), a.policy, a.share)
             for a in arms.challengers],
            [Variant(a.name, a.bundle, Decider(a.model, a.policy, max_feature_age_s), a.policy)
             for a in arms.shadows],
            salt=arms.salt,
        )
        self._store = store or NoIdempotency()
        self._policy = policy
        self._replays = Replays(self._store, policy.version, policy.reason_table, policy)
        # Operator controls: their reason entries follow each policy's own, at slots that never
        # move (one compiled set per table length: a challenger's policy may name more reasons).
        vocab = vocabulary or ctl.Vocabulary.from_catalog(None)
        self._controls: dict[int, ctl.ControlStage] = {} if controls is None else {
            n: ctl.ControlStage(controls, vocab, n) for n in {len(v.reason_table) for v in self._variants.arms}
        }
        self._registry = 0  # control reason entries in the replays' table
        self._controls_were_stale = False
        self._tables = self._variants.tables()  # each arm's policy table (+ the registry, once published)
        self._save_tables()
        self._exposure = _exposure_stage(exposure, policy)
        for v in self._variants.arms[1:]:  # the champion's caps reserve every arm's approvals
            if (why := policy.exposure_mismatch(v.policy)) is not None:
                raise ConfigError(f"challenger {v.name!r}: {why}")
        self.model_version = model.version
        self.policy_version = policy.version
        # Decision ids: a per-replica prefix and a counter (no UUID per decision).
        self._id_prefix = f"d{os.urandom(5).hex()}"
        self._next_id = 0

    @property
    def ready(self) -> bool:
        """The stores answered the last batch (a replica that answers degraded is alive, not ready)."""
        return (self._features.ready and self._replays.ready
                and (self._exposure is None or self._exposure.ready) and not self._controls_were_stale)

    @property
    def controls(self) -> ControlCache | None:
        """The operator controls this engine applies (None: none)."""
        return next((st.cache for st in self._controls.values()), None)

    @property
    def variants(self) -> Variants:
        """The champion, challengers and shadows this engine decides with."""
        return self._variants

    def score(self, batch: RequestBatch, now: float | None = None) -> DecisionBatch:
        if batch.trace:
            # The first sampled request's trace continues here (a child of its RPC's span, so
            # a caller's trace reaches the replica); every sampled request is linked.
            traces = batch.trace.split("\n")
            with self._tel.span("score_batch", links=traces, parent=traces[0], size=len(batch)):
                timer = StageTimer(traced=True)
                try:
                    return self._score(batch, now, timer)
                finally:  # a child span per stage, also for a batch that failed part way
                    self._tel.stage_spans(timer.intervals or ())
        return self._score(batch, now, StageTimer())

    def _score(self, batch: RequestBatch, now: float | None, timer: StageTimer) -> DecisionBatch:
        if self._log is not None:
            self._log.check()
        now = time.time() if now is None else now
        requests = batch.rows
        keys = batch.idempotency_keys()
        asked = fingerprints(requests)
        compiled = self._current_controls(now)
        replays = self._replays
        with timer("idempotency_lookup"):
            plan = replays.plan(keys, asked, requests["deadline"] <= now, requests["product"])
        if self._controls and plan.replayed.any():
            replays = self._replays_within(plan, replays)
        fresh = np.flatnonzero(plan.fresh)
        features, shadows = None, None
        if fresh.size:
            features, held, shadows = self._decide(requests, plan, fresh, now, timer, compiled=compiled)
            plan.rows["fingerprint"][fresh] = asked[fresh]
            with timer("idempotency_save"):
                replays.save(plan, fresh, keys)
            if held is not None and self._exposure is not None:
                with timer("exposure"):  # only where an approval is not answered as granted
                    self._exposure.settle(held, plan.rows[fresh], plan.replayed[fresh])
        plan.finish()
        rows = plan.rows
        # Echo what was asked: the id and the currency the limit is in.
        rows["application_id"] = requests["application_id"]
        rows["currency"] = requests["currency"]
        answer = DecisionBatch(rows, replays.reason_table(plan, self._tables), _message(rows), timer.seconds,
                               self._variants.shadow_stats(shadows))
        if self._log is not None:
            replay = (plan.replayed | (plan.copy_of >= 0)) & (rows["status"] == Code.OK)
            with timer("log_write"):
                self._log.append(requests, answer, replay, fresh, features, shadows=self._variants.shadow_log(shadows))
        return answer

    def _decide(
        self, requests: Rows, plan: Plan, fresh: npt.NDArray[np.intp], now: float, timer: StageTimer, *,
        compiled: dict[int, ctl.Compiled] | None,
    ) -> tuple[FeatureBatch, Held | None, npt.NDArray[np.void] | None]:
        asked = requests[fresh]
        with timer("feature_read"):
            gathered = self._features.gather(asked["merchant_id"].astype("U64").tolist(), now)
        out = plan.rows[fresh]
        arm = self._variants.decide(asked, gathered, now, timer, out)
        shadows = self._variants.shadow(asked, gathered, now, timer)
        if compiled:
            with timer("policy"):  # the controls adjust the policy's outputs: timed as policy
                self._apply_controls(compiled, asked, gathered, out, arm)
            if self._controls_stale():
                with timer("policy"):
                    self._degrade(asked, out, arm, "controls")
        out["application_id"] = asked["application_id"]
        out["currency"] = asked["currency"]
        first = self._next_id
        self._next_id += len(fresh)
        out["decision_id"] = [f"{self._id_prefix}-{k:x}".encode() for k in range(first, first + len(fresh))]
        held = None
        if self._exposure is not None:  # after the controls: the limits are final; reserved by decision id
            with timer("exposure"):
                held = self._exposure.reserve(asked, gathered.features, out, now)
        plan.rows[fresh] = out
        return gathered.features, held, shadows

    def _controls_stale(self) -> bool:
        """The controls' store has not confirmed the set in force for longer than the policy
        allows: the controls are a missing input (logged once per outage, not per batch)."""
        cache = self.controls
        stale = cache is not None and cache.age_s() > self._policy.config.degraded.controls_max_age_s
        if stale != self._controls_were_stale:
            self._controls_were_stale = stale
            log.log(logging.WARNING if stale else logging.INFO, "operator controls %s",
                    "not confirmed by their store: applying the controls' degraded mode" if stale
                    else "confirmed again by their store")
        return stale

    def _degrade(self, asked: Rows, out: Rows, arm: npt.NDArray[np.intp], name: DegradedInput) -> None:
        """``name``'s degraded mode on every row, by the policy of the arm that decided it."""
        for k in np.unique(arm).tolist():
            idx = np.flatnonzero(arm == k)
            part = out[idx]
            self._variants.arms[k].policy.degrade_records(part, asked["product"][idx], name)
            out[idx] = part

    def _apply_controls(
        self, compiled: dict[int, ctl.Compiled], asked: Rows, gathered: Gathered, out: Rows,
        arm: npt.NDArray[np.intp],
    ) -> None:
        """Each row's controls, their reasons at the slots after its own policy's table."""
        lengths = self._variants.table_lengths[arm]
        for n, c in compiled.items():
            if not c.size:
                continue
            if len(compiled) == 1:  # every arm's table is as long (the usual case): all rows at once
                ctl.apply(c, asked, gathered.features, out, n + self._registry)
                return
            idx = np.flatnonzero(lengths == n)
            part = out[idx]
            ctl.apply(c, asked[idx], take(gathered, idx).features, part, n + self._registry)
            out[idx] = part

    # -- operator controls -----------------------------------------------------------
    def _current_controls(self, now: float) -> dict[int, ctl.Compiled] | None:
        """This batch's compiled controls (by policy table length); a grown reason registry
        first extends the replays' tables."""
        if not self._controls:
            return None
        compiled = {}
        for n, stage in self._controls.items():
            snap, compiled[n] = stage.current(now)
        if len(snap.reasons) > self._registry:
            self._publish_reasons(snap.reasons)
        return compiled

    def _publish_reasons(self, registry: tuple[tuple[str, str], ...]) -> None:
        """Replays keyed by the policy's table plus the registry (stored for other policy versions)."""
        try:
            table = (*self._policy.reason_table, *registry)
            self._replays = Replays(self._store, self._policy.version, table, self._policy)
            self._registry = len(registry)
            self._tables = {v: (*t, *registry) for v, t in self._variants.tables().items()}
            self._save_tables()
        except FeatureError as exc:  # controls still apply; entries not in the table go unnamed
            log.warning("control reason entries not published (store unavailable): %s", exc)

    def _save_tables(self) -> None:
        """The challengers' tables, so a replay of their decisions (on any replica) names its reasons."""
        for version, table in self._tables.items():
            if version == self._policy.version:
                continue
            try:
                self._replays.save_table(version, table)
            except FeatureError as exc:
                log.warning("reason table of %s not stored (store unavailable): %s", version, exc)

    def _replays_within(self, plan: Plan, replays: Replays) -> Replays:
        """Replays decided by a replica whose registry is ahead of ours: catch up before answering."""
        mine = plan.replayed & (plan.rows["policy_version"] == self._policy.version.encode())
        if not mine.any() or plan.rows["reason"][mine].max() < len(self._policy.reason_table) + self._registry:
            return replays
        assert self.controls is not None
        try:
            self.controls.refresh()
        except FeatureError as exc:
            log.warning("controls refresh for a replay failed: %s", exc)
        self._current_controls(time.time())
        # Still beyond the table (the store could not be read): unnamed rather than unanswerable.
        reasons = plan.rows["reason"]
        reasons[mine[:, None] & (reasons >= len(self._policy.reason_table) + self._registry)] = -1
        return self._replays

    def close(self) -> None:
        try:
            for stage in self._controls.values():  # every stage reads the one cache: closed once
                stage.close()
                break
            self._features.close()
            self._replays.close()
            if self._exposure is not None:
                self._exposure.close()
        finally:
            if self._log is not None:  # everything answered is written before the replica goes
                self._log.close()


def _exposure_stage(state: ExposureState | None, policy: Policy) -> ExposureStage | None:
    """The caps' stage; a policy with caps and no counters to enforce them with is refused."""
    if not policy.config.exposure.caps:
        return None  # nothing to enforce; a given store stays its owner's (shared across bundle swaps)
    if state is None:
        raise ConfigError("the policy sets exposure caps but the engine was given no exposure store")
    return ExposureStage(state, policy)


def _message(rows: Rows) -> str:
    """Why the refused items of a batch were refused (one message per batch)."""
    status = rows["status"]
    if (status == Code.ALREADY_EXISTS).any():
        return "application_id was already used for a different request within the idempotency window"
    if (status == Code.DEADLINE_EXCEEDED).any():
        return "deadline exceeded before scoring"
    if (status == Code.UNAVAILABLE).any():
        return "a store this decision needs is unavailable (see the policy's degraded modes); retry later"
    return ""
