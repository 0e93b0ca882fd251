"""Exposure caps applied to a batch's decisions: reserve approvals, reduce or refer (docs/exposure.md).

After the decider and the operator controls (so the limit is known), every approval that
a cap applies to claims its limit, in base-currency minor units, against each applicable
cap's counter for its scope value; the store grants all of a batch's claims in one atomic
call (``features.exposure``). A cap that is reached reduces the limit to what remains
(``AMOUNT_REDUCED`` and the cap's code) or refers the approval (the cap's code), by its
``on_reached``; a reduction below the policy's minimum offer refers. Every decision a cap
touches names it, first among its reasons.

A batch's reservations are kept under its first decision id; an approval that is not answered as
granted (another replica decided the application first, the idempotency save failed, the
item is refused) is released after the idempotency save, so a replay never reserves
twice. If the counters cannot be reached, the policy's degraded mode for the input
``exposure`` applies to the approvals the caps cover (refer by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features import MATRIX_COLUMNS, FeatureBatch, FeatureError
from features.exposure import CapLimit, Claims, ExposureState, Grants
from services.policy import Policy
from services.policy.decide import POLICY_REASONS
from services.policy.degraded import prepend_reason
from services.schema.codes import Code
from services.schema.enums import APPROVE, PRODUCTS, REVIEW
from services.schema.records import Rows

log = logging.getLogger(__name__)
_COLUMN = {"region": MATRIX_COLUMNS.index("region_code"), "industry": MATRIX_COLUMNS.index("industry_code")}
_REDUCED = [c for c, _ in POLICY_REASONS].index("AMOUNT_REDUCED")
_PRODUCT_NAMES = np.array(["?", *PRODUCTS])  # index = product code (1-based)
UNKNOWN = "?"  # the scope value of a merchant whose region or industry is not known
_NO_CLAIMS = Claims([], np.zeros(0, np.int64), b"", np.zeros(1, np.intp), np.zeros(0, np.intp), 1)


@dataclass(frozen=True)
class Held:
    """A batch's reservations, to release what is not answered as granted."""

    rows: npt.NDArray[np.intp]  # the claimed items' positions in the decided rows
    claims: Claims
    grants: Grants


class ExposureStage:
    def __init__(self, state: ExposureState, policy: Policy) -> None:
        caps = policy.config.exposure.caps
        self.state = state
        self._policy = policy
        self.limits = tuple(
            CapLimit(c.name, c.window_s, c.max_amount_base_minor, c.max_count, c.on_reached == "refer") for c in caps
        )
        self._scope = tuple(c.scope for c in caps)
        self._values = tuple(np.array(sorted(c.values)) if c.values else None for c in caps)
        self._reason = np.array([policy.exposure_reasons[c.name] for c in caps], dtype=np.int16)
        self._min = max(1, policy.config.min_limit_base_minor)
        self.ready = True  # the counters answered the last batch that needed them

    def reserve(self, requests: Rows, feats: FeatureBatch, out: Rows, now: float) -> Held | None:
        """Claim the approvals of ``out`` (decided records of ``requests``), adjusting them in place."""
        approved = (out["status"] == Code.OK) & (out["decision"] == APPROVE) & (out["approved_minor"] > 0)
        cand = np.flatnonzero(approved)
        if cand.size == 0:
            return None
        rows, claims = self._claims(requests, feats, out, cand)
        if rows.size == 0:
            return None
        try:
            grants = self.state.reserve(self.limits, claims, now)
        except FeatureError as exc:
            log.log(logging.WARNING if self.ready else logging.DEBUG,
                    "exposure counters unavailable, applying the exposure mode: %s", exc)
            self.ready = False
            part = out[rows]  # a copy: written back below
            self._policy.degrade_records(part, requests["product"][rows], "exposure")
            out[rows] = part
            return None
        self.ready = True
        self._apply(out, rows, claims, grants)
        return Held(rows, claims, grants)

    def settle(self, held: Held, final: Rows, replayed: npt.NDArray[np.bool_]) -> None:
        """Release the reservations of items not answered as granted (``final``: the decided rows
        after the idempotency save; ``replayed``: answered with another replica's decision)."""
        f = final[held.rows]
        kept = (f["status"] == Code.OK) & (f["decision"] == APPROVE) & ~replayed[held.rows]
        drop = np.flatnonzero(~kept & (held.grants.amount > 0)).tolist()
        if not drop:
            return
        try:
            self.state.release(self.limits, held.claims, held.grants, drop)
        except FeatureError as exc:  # held until they expire: conservative, never an overdraw
            log.warning("releasing %d exposure reservations failed (they lapse at expiry): %s", len(drop), exc)

    def _scope_values(
        self, requests: Rows, feats: FeatureBatch, cand: npt.NDArray[np.intp], j: int
    ) -> npt.NDArray[np.str_]:
        scope = self._scope[j]
        if scope == "merchant":
            ids: npt.NDArray[np.str_] = requests["merchant_id"][cand].astype("U64")
            return ids
        if scope == "product":
            names: npt.NDArray[np.str_] = _PRODUCT_NAMES[np.clip(requests["product"][cand], 0, len(PRODUCTS))]
            return names
        codes = feats.matrix[cand, _COLUMN[scope]]
        text = np.where(np.isnan(codes), -1, codes).astype(np.int64).astype("U12")
        out: npt.NDArray[np.str_] = np.where(np.isnan(codes), UNKNOWN, text)
        return out

    def _claims(
        self, requests: Rows, feats: FeatureBatch, out: Rows, cand: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], Claims]:
        """The candidates some cap applies to, and their claims (one counter per cap and value),
        in numpy: a (candidates, caps) table of counter numbers, -1 where a cap does not apply."""
        table = np.full((len(cand), len(self.limits)), -1, dtype=np.intp)
        counters: list[tuple[int, str]] = []
        for j in range(len(self.limits)):
            v = self._scope_values(requests, feats, cand, j)
            allowed = self._values[j]
            applies = np.ones(len(cand), bool) if allowed is None else np.isin(v, allowed)
            if not applies.any():
                continue
            uniq, inverse = np.unique(v[applies], return_inverse=True)
            table[applies, j] = len(counters) + inverse.reshape(-1)
            counters += [(j, u) for u in uniq.tolist()]
        keep = np.flatnonzero((table >= 0).any(axis=1))
        rows = cand[keep]
        if rows.size == 0:
            return rows, _NO_CLAIMS
        table = table[keep]
        starts = np.zeros(len(keep) + 1, dtype=np.intp)
        np.cumsum((table >= 0).sum(axis=1), out=starts[1:])
        base = self._policy.fx.to_base_minor(out["approved_minor"][rows], out["currency"][rows])
        claims = Claims(
            counters=counters, amount=np.ceil(np.round(base, 6)).astype(np.int64),
            token=bytes(out["decision_id"][rows[0]]), starts=starts,
            counter=table[table >= 0], min_amount=self._min,
        )
        return rows, claims

    def _apply(self, out: Rows, rows: npt.NDArray[np.intp], claims: Claims, grants: Grants) -> None:
        """Refer or reduce what the caps reached; name the caps that did it."""
        granted = grants.amount
        decision = out["decision"][rows]
        decision[granted == 0] = REVIEW
        out["decision"][rows] = decision
        reduced = (granted > 0) & (granted < claims.amount)
        if reduced.any():
            at = rows[reduced]
            limit = self._from_base(granted[reduced], out["currency"][at])
            out["approved_minor"][at] = np.minimum(out["approved_minor"][at], limit)
        touched = np.zeros((len(rows), len(self.limits)), dtype=bool)
        if grants.hit_item.size:
            cap_of = np.array([c for c, _ in claims.counters], dtype=np.intp)
            touched[grants.hit_item, cap_of[grants.hit_counter]] = True
        reason, contrib = out["reason"], out["reason_contrib"]  # views: prepend_reason writes through
        where = np.zeros(len(out), dtype=bool)
        where[rows[reduced]] = True
        prepend_reason(reason, contrib, _REDUCED, where)
        for j in reversed(range(len(self.limits))):  # the first cap ends up first
            where[:] = False
            where[rows[touched[:, j]]] = True
            prepend_reason(reason, contrib, int(self._reason[j]), where)

    def _from_base(self, base_minor: npt.NDArray[np.int64], currency: npt.NDArray[np.int8]) -> npt.NDArray[np.int64]:
        """A grant in the request's currency, rounded down; unlike ``FxTable.from_base_minor`` it
        rounds away float noise first (5 CNY fen would otherwise become 4 in 6% of amounts), so
        a grant in the base currency is approved exactly as reserved."""
        fx = self._policy.fx
        value = base_minor / fx.base_scale / fx.fx[currency] * fx.scale[currency]
        out: npt.NDArray[np.int64] = np.floor(np.round(value, 6)).astype(np.int64)
        return out

    def close(self) -> None:
        self.state.close()
