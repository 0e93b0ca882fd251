"""Vectorized policy: one call decides a whole batch.

Per load (not per request) the policy resolves grade bounds, APR grid, product caps,
its rules and the model-feature -> reason-code map into arrays; ``decide`` is then a
handful of numpy operations over the batch. It is the engine's one call per batch: it
is given what is known about each request (the request, the model's PD and reasons, the
merchant's features and tags) and does the rest itself: fires its rules, converts
currencies, grades, decides, limits, prices and gives its reasons. When an input is
missing (``PolicyInputs.degraded``: no features; ``velocity_missing``: no fresh counts)
it applies the policy's degraded modes (``services.policy.degraded``) per product; the
idempotency store's absence is applied to the decided records (``degrade_records``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kernels import KernelError, PolicyRules
from services.errors import ConfigError
from services.policy.config import PRODUCTS, DegradedInput, PolicyConfig
from services.policy.degraded import CAP, DEGRADED_REASONS, REFER, UNAVAILABLE, DegradedModes, RowModes, prepend_reason
from services.policy.usual import UsualVelocity
from services.schema.codes import Code
from services.schema.currency import CURRENCIES
from services.schema.enums import APPROVE, DECLINE, REVIEW
from services.schema.records import Rows

__all__ = ["APPROVE", "DECLINE", "POLICY_REASONS", "REVIEW", "Decisions", "FxTable", "Policy", "PolicyInputs"]

# Reasons the policy itself gives, in the order they are reported (before model reasons).
POLICY_REASONS: tuple[tuple[str, str], ...] = (
    ("DEGRADED_MODE", "Decided without the full set of inputs (a D_ reason names what was missing)"),
    ("NO_HISTORY", "No trading history is known for this merchant"),
    ("STALE_FEATURES", "The merchant's data is older than policy allows"),
    ("HIGH_VELOCITY", "Unusually many credit applications in a short time"),
    ("LIMIT_TOO_LOW", "The affordable limit is below the minimum offer"),
    ("AMOUNT_REDUCED", "The approved limit is below the requested amount"),
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class PolicyInputs:
    pd: F64  # (n,) probability of default; NaN where not scored
    known: B  # (n,) merchant has history
    stale: B  # (n,) features older than allowed
    monthly_revenue_base_minor: F64  # (n,) 30-day revenue, base-currency minor units
    amount_minor: I64  # (n,) requested, in the request currency
    currency: npt.NDArray[np.int8]  # (n,) index into CURRENCIES
    term_months: npt.NDArray[np.int16]
    product: npt.NDArray[np.int8]  # 1-based proto enum value
    apps_1h: F64
    apps_24h: F64
    model_reason_features: npt.NDArray[np.int32]  # (n, k) model feature index, -1 none
    model_reason_contrib: F64  # (n, k)
    degraded: bool = False  # the features could not be read (every row)
    velocity_missing: bool = False  # the velocity update failed: counts are the reader's, maybe old
    # What the rules read: the feature matrix (columns as the policy was built with) and
    # the tag bitset as uint64 words. None: no features for this batch (no rule fires).
    features: npt.NDArray[np.float32] | None = None
    tag_words: npt.NDArray[np.uint64] | None = None


@dataclass(frozen=True)
class Decisions:
    decision: npt.NDArray[np.int8]
    approved_minor: I64  # in the request currency
    apr_bps: npt.NDArray[np.int32]
    grade: npt.NDArray[np.int8]  # index into Policy.grade_letters, -1 none
    reason: npt.NDArray[np.int16]  # (n, R) index into Policy.reason_table, -1 none
    reason_contrib: npt.NDArray[np.float32]  # (n, R)
    degraded: B  # (n,) decided with an input missing
    unavailable: B  # (n,) not decided: the policy says answer UNAVAILABLE for what was missing


class FxTable:
    """The policy's exchange rates, as arrays: request-currency minor units -> base minor units."""

    def __init__(self, config: PolicyConfig) -> None:
        self.fx = np.array([config.fx_to_base[c.code] for c in CURRENCIES])
        self.scale = np.array([10.0**c.exponent for c in CURRENCIES])
        base = next(c for c in CURRENCIES if c.code == config.base_currency)
        self.base_scale = 10.0**base.exponent

    def to_base_minor(self, amount_minor: I64 | F64, currency: npt.NDArray[np.int8]) -> F64:
        """Amounts in request-currency minor units -> base-currency minor units (NaN stays NaN)."""
        factor: F64 = self.fx[currency] * self.base_scale / self.scale[currency]
        out: F64 = np.asarray(amount_minor, dtype=np.float64) * factor
        return out

    def from_base_minor(self, base_minor: F64, currency: npt.NDArray[np.int8]) -> I64:
        """Base-currency minor units -> request-currency minor units, rounded down."""
        out: I64 = np.floor(base_minor / self.base_scale / self.fx[currency] * self.scale[currency]).astype(np.int64)
        return out


def _compile_rules(
    config: PolicyConfig, columns: Sequence[str], tag_index: Mapping[str, int], n_tags: int
) -> PolicyRules | None:
    """The policy's named rules as a compiled kernel rule set (names resolved once, here)."""
    if not config.rules:
        return None
    col = {c: i for i, c in enumerate(columns)}
    specs = []
    for rule in config.rules:
        conds: list[dict[str, object]] = []
        for c in rule.when:
            if c.feature is not None:
                if c.feature not in col:
                    raise ConfigError(f"policy rule {rule.name!r}: unknown feature {c.feature!r}")
                cond: dict[str, object] = {"feature": col[c.feature], "op": c.op}
                if c.value is not None:
                    cond["value"] = c.value
            else:
                names = (c.tag,) if c.tag is not None else tuple(c.tags or ())
                unknown = [t for t in names if t not in tag_index]
                if unknown:
                    raise ConfigError(f"policy rule {rule.name!r}: unknown tag(s) {unknown}")
                ids = [tag_index[t] for t in names]
                cond = {"tag": ids[0], "op": c.op} if c.tag is not None else {"tags": ids, "op": c.op}
            conds.append(cond)
        specs.append({"name": rule.name, "all": conds})
    try:
        return PolicyRules.from_dict({"n_features": len(columns), "n_tags": n_tags, "rules": specs})
    except KernelError as exc:
        raise ConfigError(f"policy rules: {exc}") from exc


@dataclass(frozen=True)
class _Verdict:
    """Grades and decisions before limits: what ``decide`` works out first."""

    scored: B
    grade: npt.NDArray[np.intp]
    decision: npt.NDArray[np.int8]
    velocity: B
    stale: B
    fired: B
    above_usual: B  # velocity against the merchant's usual rate (velocity.above_usual)


class Policy:
    def __init__(
        self,
        config: PolicyConfig,
        model_features: Sequence[str],
        *,
        feature_columns: Sequence[str] = (),
        tag_index: Mapping[str, int] | None = None,
        n_tags: int = 0,
    ) -> None:
        self.config = config
        self.version = config.version
        self.fx = FxTable(config)
        self.grade_letters: tuple[str, ...] = tuple(g.grade for g in config.grades)
        self._max_pd = np.array([g.max_pd for g in config.grades])
        self._multiple = np.array([g.limit_multiple for g in config.grades])
        self._apr = np.array([g.apr_bps for g in config.grades], dtype=np.int32)
        self._buckets = np.array(config.apr_term_buckets)
        # Index 0 unused: products are 1-based proto enum values.
        self._caps = np.array([0] + [config.product_caps_base_minor[p] for p in PRODUCTS], dtype=np.float64)
        table: list[tuple[str, str]] = list(POLICY_REASONS)
        self._feature_reason = self._model_reasons(model_features, table)
        self._rules = _compile_rules(config, feature_columns, tag_index or {}, n_tags)
        self._rule_decline = np.array([r.action == "decline" for r in config.rules], dtype=bool)
        self._rule_reason = np.array([_code(table, r.code, r.description) for r in config.rules], dtype=np.int16)
        # Appended last, so the indices of every older code stay what they were.
        # The exposure counters are an input only where the policy sets caps: a policy
        # without any keeps the reason table it always had.
        self._missing_reason = {
            name: _code(table, *DEGRADED_REASONS[name])
            for name in DEGRADED_REASONS if name != "exposure" or config.exposure.caps
        }
        self._missing_cols = np.array([self._missing_reason["features"], self._missing_reason["velocity"]], np.int16)
        self.degraded = DegradedModes(config.degraded, self.grade_letters)
        # Each exposure cap's reason, by cap name (after every older code, for the same reason).
        self.exposure_reasons: dict[str, int] = {c.name: _code(table, c.code, c.description)
                                                 for c in config.exposure.caps}
        # Velocity against the usual rate, where the policy sets it: its code last of all.
        self._usual = UsualVelocity(config.velocity.above_usual, feature_columns)
        usual = config.velocity.above_usual
        self._usual_reason = np.array([_code(table, usual.code, usual.description)] if usual else [], np.int16)
        self.reason_table: tuple[tuple[str, str], ...] = tuple(table)

    def _model_reasons(self, model_features: Sequence[str], table: list[tuple[str, str]]) -> npt.NDArray[np.int16]:
        """Model feature index -> reason index; the last slot answers feature -1 ("no reason").

        Every mapping's code enters the table in the policy's order, whatever the model reads:
        the table is a function of the policy alone, so bundles that share a policy version
        (a champion and a challenger with other models) share its table, which is how answers,
        replays and the decision log look codes up."""
        for r in self.config.reasons:
            _code(table, r.code, r.description)
        out = np.full(len(model_features) + 1, -1, dtype=np.int16)
        for i, name in enumerate(model_features):
            mapping = self.config.reason_for(name)
            if mapping is not None:
                out[i] = _code(table, mapping.code, mapping.description)
        return out

    def reason_columns(self, top_k: int) -> int:
        """Width of ``Decisions.reason``: policy reasons, one per rule (and one for
        ``velocity.above_usual`` where set), model reasons, then what was missing (features,
        velocity)."""
        rules = len(self.config.rules) + self._usual.width
        return len(POLICY_REASONS) + 2 + rules + min(self.config.max_model_reasons, top_k)

    def fire_rules(
        self, matrix: npt.NDArray[np.float32], tag_words: npt.NDArray[np.uint64] | None
    ) -> npt.NDArray[np.bool_] | None:
        """Which of the policy's rules fire for each row of the feature matrix and tags."""
        if self._rules is None:
            return None
        tags = tag_words if self._rules.n_tags else None
        if tags is not None and tags.shape[1] != self._rules.n_tag_words:
            tags = np.zeros((matrix.shape[0], self._rules.n_tag_words), dtype=np.uint64)
        return self._rules.evaluate(matrix if self._rules.n_features else None, tags)

    def to_base_minor(self, amount_minor: I64 | F64, currency: npt.NDArray[np.int8]) -> F64:
        return self.fx.to_base_minor(amount_minor, currency)

    # -- the one call per batch ------------------------------------------------
    def decide(self, x: PolicyInputs) -> Decisions:
        v = self._verdict(x)
        requested_base = self.fx.to_base_minor(x.amount_minor, x.currency)
        revenue = np.where(np.isnan(x.monthly_revenue_base_minor), 0.0, x.monthly_revenue_base_minor)
        g = np.maximum(v.grade, 0)
        cap = np.minimum(self._multiple[g] * revenue, self._caps[x.product])
        cap = np.where(v.scored & x.known, cap, 0.0)
        offer_base = np.minimum(requested_base, cap)
        decision = v.decision
        too_low = (decision == APPROVE) & (offer_base < self.config.min_limit_base_minor)
        decision[too_low] = DECLINE
        reduced = (decision != DECLINE) & (offer_base < requested_base) & (offer_base > 0)
        approved = np.where(reduced, self.fx.from_base_minor(offer_base, x.currency), x.amount_minor)
        approved = np.where(decision == DECLINE, 0, approved)
        approved = np.where((decision == REVIEW) & (cap <= 0), 0, approved)
        bucket = np.minimum(np.searchsorted(self._buckets, x.term_months, side="left"), len(self._buckets) - 1)
        apr = np.where((decision != DECLINE) & (v.grade >= 0), self._apr[g, bucket], 0).astype(np.int32)
        d = Decisions(
            decision, approved.astype(np.int64), apr, v.grade.astype(np.int8), *self._reasons(x, v, too_low, reduced),
            degraded=np.full(len(decision), x.degraded or x.velocity_missing),
            unavailable=np.zeros(len(decision), dtype=bool),
        )
        if x.degraded:
            self._without_features(x, d, requested_base, bucket)
        if x.velocity_missing:
            m = self.degraded.rows("velocity", x.product, len(decision))
            self._restrain(m, d.decision, d.approved_minor, x.currency)
            d.unavailable[m.mode == UNAVAILABLE] = True
        return d

    def _without_features(
        self, x: PolicyInputs, d: Decisions, requested_base: F64, bucket: npt.NDArray[np.intp]
    ) -> None:
        """The features mode: refer (already REVIEW, no limit), cap, or unavailable."""
        m = self.degraded.rows("features", x.product, len(d.decision))
        d.unavailable[m.mode == UNAVAILABLE] = True
        offer = np.minimum(requested_base, np.where(m.mode == CAP, m.cap_base_minor, 0.0))
        ok = (m.mode == CAP) & (offer >= self.config.min_limit_base_minor)
        if not ok.any():
            return  # a cap that cannot reach the minimum offer leaves the row REVIEW
        limit = np.where(offer < requested_base, self.fx.from_base_minor(offer, x.currency), x.amount_minor)
        d.decision[ok] = APPROVE
        d.approved_minor[ok] = limit[ok]
        d.grade[ok] = m.grade[ok]
        d.apr_bps[ok] = self._apr[m.grade[ok], bucket[ok]]

    def _restrain(
        self, m: RowModes, decision: npt.NDArray[np.int8], approved: I64, currency: npt.NDArray[np.int8]
    ) -> None:
        """Refer (APPROVE -> REVIEW) or cap the limit of decisions made without one input."""
        decision[(m.mode == REFER) & (decision == APPROVE)] = REVIEW
        cap = m.mode == CAP
        if cap.any():
            limit = self.fx.from_base_minor(np.where(cap, m.cap_base_minor, 0.0), currency)
            approved[cap] = np.minimum(approved[cap], limit[cap])

    def exposure_mismatch(self, other: Policy) -> str | None:
        """Why ``other`` (a challenger's policy) cannot decide beside this one (the champion's),
        whose exposure caps apply to every variant's approvals: the caps' reasons (and the
        exposure input's) must sit at the same places of both reason tables. None: it can."""
        if not self.config.exposure.caps or other.reason_table == self.reason_table:
            return None
        mine = {n: self.reason_table[i] for n, i in self.exposure_reasons.items()}
        theirs = {n: other.reason_table[i] for n, i in other.exposure_reasons.items()}
        same = mine == theirs and all(other.exposure_reasons[n] == i for n, i in self.exposure_reasons.items())
        same = same and other._missing_reason.get("exposure") == self._missing_reason["exposure"]
        if same:
            return None
        return (f"the champion's exposure caps {sorted(mine)} apply to every variant: policy {other.version} "
                f"must declare the same caps (it declares {sorted(theirs) or 'none'})")

    def degrade_records(self, rows: Rows, product: npt.NDArray[np.int8] | None, name: DegradedInput) -> None:
        """Apply ``name``'s mode to decided records (in place): refer, cap or refuse ``UNAVAILABLE``,
        flagged degraded with ``DEGRADED_MODE`` and the reason naming ``name`` first.
        ``product`` None: the defaults' mode for every row."""
        m = self.degraded.rows(name, product, len(rows))
        self._restrain(m, rows["decision"], rows["approved_minor"], rows["currency"])
        rows["status"][m.mode == UNAVAILABLE] = Code.UNAVAILABLE
        rows["degraded"] = True
        every = np.ones(len(rows), dtype=bool)
        prepend_reason(rows["reason"], rows["reason_contrib"], self._missing_reason[name], every)
        prepend_reason(rows["reason"], rows["reason_contrib"], 0, every)  # DEGRADED_MODE

    def _verdict(self, x: PolicyInputs) -> _Verdict:
        n = x.pd.shape[0]
        scored = ~np.isnan(x.pd) & (not x.degraded)
        pd0 = np.where(scored, x.pd, 0.0)  # (np.nan_to_num is several times slower on small batches)
        grade = np.where(scored, np.searchsorted(self._max_pd, pd0, side="left"), -1)
        grade = np.minimum(grade, len(self._max_pd) - 1)
        decision = np.full(n, APPROVE, dtype=np.int8)
        decision[x.pd >= self.config.review_pd] = REVIEW
        decision[x.pd >= self.config.decline_pd] = DECLINE
        velocity = (x.apps_1h >= self.config.velocity.review_apps_1h) | (
            x.apps_24h >= self.config.velocity.review_apps_24h
        )
        stale = x.stale if self.config.on_stale_features == "review" else np.zeros(n, dtype=bool)
        fired = None
        if x.features is not None and not x.degraded:
            fired = self.fire_rules(x.features, x.tag_words)
        if fired is None:
            fired = np.zeros((n, len(self.config.rules)), dtype=bool)
        fired = fired & x.known[:, None]  # rules read features: unknown merchants have none
        above_usual = self._usual.fires(x.apps_1h, x.apps_24h, None if x.degraded else x.features) & x.known
        decision[fired[:, self._rule_decline].any(axis=1)] = DECLINE
        soft = ~x.known | stale | velocity | above_usual | fired[:, ~self._rule_decline].any(axis=1)
        decision[(decision == APPROVE) & soft] = REVIEW
        if x.degraded:
            decision[:] = REVIEW
        else:
            decision[~x.known] = REVIEW
        return _Verdict(scored, grade, decision, velocity, stale, fired, above_usual)

    def _reasons(
        self, x: PolicyInputs, v: _Verdict, too_low: B, reduced: B
    ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float32]]:
        n = x.pd.shape[0]
        degraded = x.degraded or x.velocity_missing
        flags = np.stack(
            [np.full(n, degraded), ~x.known & ~x.degraded, v.stale & x.known, v.velocity, too_low, reduced],
            axis=1,
        )
        policy_reason = np.where(flags, np.arange(len(POLICY_REASONS), dtype=np.int16), -1)
        # What was missing goes last: older column positions (policy, rules, model) never move.
        missing = np.where(np.array([[x.degraded, x.velocity_missing]]), self._missing_cols, -1).astype(np.int16)
        rule_reason = np.where(v.fired, self._rule_reason, -1).astype(np.int16)
        usual_reason = np.where(v.above_usual[:, None], self._usual_reason, -1).astype(np.int16)
        k = min(self.config.max_model_reasons, x.model_reason_features.shape[1])
        model_reason = self._feature_reason[x.model_reason_features[:, :k]]
        contrib = x.model_reason_contrib[:, :k].astype(np.float32)
        # Several features can share a code: keep the first (largest) of each.
        for j in range(1, k):
            dup = (model_reason[:, :j] == model_reason[:, j : j + 1]).any(axis=1)
            model_reason[dup, j] = -1
        model_reason[(contrib <= 0) | ~v.scored[:, None]] = -1
        reason = np.concatenate(
            [policy_reason, rule_reason, usual_reason, model_reason, np.repeat(missing, n, axis=0)], axis=1
        ).astype(np.int16)
        fixed = np.zeros((n, len(POLICY_REASONS) + len(self.config.rules) + self._usual.width), np.float32)
        return reason, np.concatenate([fixed, contrib, np.zeros((n, 2), np.float32)], axis=1)


def _code(table: list[tuple[str, str]], code: str, description: str) -> int:
    """Index of ``code`` in the reason table, appended on first use."""
    for i, (c, _) in enumerate(table):
        if c == code:
            return i
    table.append((code, description))
    return len(table) - 1
