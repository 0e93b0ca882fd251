"""Degraded modes, as decision tables: each input that can be missing x each mode.

Policy-level tables (features, velocity) run the real policy on crafted inputs;
the idempotency table runs the real ``Replays`` over a Redis store whose server is gone
(connections refused: a real failure, no mock); the engine-level rows build engines from
real parts (the world's SQLite store, a dead Redis for the part that is missing).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from features import CachedReader
from features.stores.sqlite import SqliteBackend
from services.errors import ConfigError
from services.policy import Policy, PolicyInputs, currency_index, load_policy
from services.policy.config import PRODUCTS
from services.policy.decide import APPROVE, DECLINE, REVIEW
from services.schema.codes import Code
from services.schema.records import RECORD_SCHEMA
from services.scoring.replays import Replays
from tests.conftest import World, feature_settings
from tests.faults.support import batch, dead_redis, engine_of, policy_for
from tests.services.policy_inputs import policy_inputs as _inputs

FEATURES = ("rev_cv_30d", "rev_mean_30d", "credit_utilisation", "term_months", "unmapped_feature")
CNY = currency_index("CNY")
CAP = 2_000_000  # 20,000.00 CNY; requests ask 50,000.00
WC, EQUIPMENT = PRODUCTS.index("WORKING_CAPITAL") + 1, PRODUCTS.index("EQUIPMENT") + 1


def _policy_file(tmp_path: Path, degraded: dict[str, Any] | None) -> Path:
    doc = load_policy().model_dump(mode="json", exclude={"degraded"})
    doc["rules"] = []
    if degraded is not None:
        doc["degraded"] = degraded
    path = tmp_path / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _policy(tmp_path: Path, degraded: dict[str, Any] | None = None) -> Policy:
    return Policy(load_policy(_policy_file(tmp_path, degraded)), FEATURES)




def _featureless(n: int, **over: object) -> PolicyInputs:
    """What the decider passes when the features could not be read."""
    nan = np.full(n, np.nan)
    return _inputs(n, pd=nan, known=np.zeros(n, dtype=bool), monthly_revenue_base_minor=nan,
                   apps_1h=nan, apps_24h=nan, degraded=True, **over)


def _codes(policy: Policy, row: np.ndarray) -> list[str]:
    return [policy.reason_table[r][0] for r in row if r >= 0]


# -- features x mode ------------------------------------------------------------------------

FEATURES_TABLE = [
    # mode -> (decision, approved, grade letter (None: ungraded), unavailable)
    ("refer", (REVIEW, 0, None, False)),
    ({"mode": "cap", "cap_base_minor": CAP}, (APPROVE, CAP, "E", False)),
    ({"mode": "cap", "cap_base_minor": CAP, "grade": "D"}, (APPROVE, CAP, "D", False)),
    ("unavailable", (None, None, None, True)),
]


Expect = tuple[int | None, int | None, str | None, bool]


@pytest.mark.parametrize(("mode", "expect"), FEATURES_TABLE)
def test_features_missing(tmp_path: Path, mode: object, expect: Expect) -> None:
    decision, approved, grade, unavailable = expect
    policy = _policy(tmp_path, {"defaults": {"features": mode}})
    d = policy.decide(_featureless(3))
    assert d.unavailable.tolist() == [unavailable] * 3
    assert d.degraded.all()
    for i in range(3):
        codes = _codes(policy, d.reason[i])
        assert codes[0] == "DEGRADED_MODE" and "D_FEATURES_UNAVAILABLE" in codes
        assert "D_VELOCITY_UNAVAILABLE" not in codes
    if unavailable:
        return
    assert d.decision.tolist() == [decision] * 3
    assert d.approved_minor.tolist() == [approved] * 3
    letters = [policy.grade_letters[g] if g >= 0 else None for g in d.grade]
    assert letters == [grade] * 3
    if grade is not None:  # priced at the mode's grade, 12-month bucket
        g = policy.grade_letters.index(grade)
        assert d.apr_bps.tolist() == [policy.config.grades[g].apr_bps[2]] * 3


def test_features_cap_below_the_request_keeps_the_request_and_above_min_offer_only(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"defaults": {"features": {"mode": "cap", "cap_base_minor": CAP}}})
    small = np.array([1_000_000, 10_000], dtype=np.int64)  # 10,000.00 under the cap; 100.00 under min offer
    d = policy.decide(_featureless(2, amount_minor=small))
    assert d.decision.tolist() == [APPROVE, REVIEW]
    assert d.approved_minor.tolist() == [1_000_000, 0]


# -- velocity x mode ------------------------------------------------------------------------

VELOCITY_TABLE = [
    # mode, decision of a good applicant, its approved amount, unavailable
    ("refer", REVIEW, 5_000_000, False),
    ({"mode": "cap", "cap_base_minor": CAP}, APPROVE, CAP, False),
    ("unavailable", None, None, True),
]


@pytest.mark.parametrize(("mode", "decision", "approved", "unavailable"), VELOCITY_TABLE)
def test_velocity_missing(tmp_path: Path, mode: object, decision: int | None, approved: int | None,
                          unavailable: bool) -> None:
    policy = _policy(tmp_path, {"defaults": {"velocity": mode}})
    pd = np.array([0.01, 0.5])  # a good applicant and a bad one
    d = policy.decide(_inputs(2, pd=pd, velocity_missing=True))
    assert d.degraded.all() and d.unavailable.tolist() == [unavailable] * 2
    for i in range(2):
        codes = _codes(policy, d.reason[i])
        assert codes[0] == "DEGRADED_MODE" and "D_VELOCITY_UNAVAILABLE" in codes
        assert "D_FEATURES_UNAVAILABLE" not in codes
    if unavailable:
        return
    assert d.decision[0] == decision and d.approved_minor[0] == approved
    assert policy.grade_letters[d.grade[0]] == "A"  # graded on its features as usual
    assert d.decision[1] == DECLINE  # no mode turns a decline into anything kinder


def test_nothing_missing_is_not_degraded(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    d = policy.decide(_inputs(2))
    assert not d.degraded.any() and not d.unavailable.any()
    assert d.decision.tolist() == [APPROVE, APPROVE]
    assert not any(c.startswith("D_") or c == "DEGRADED_MODE" for c in _codes(policy, d.reason[0]))


def test_features_and_velocity_missing_compose(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"defaults": {"features": {"mode": "cap", "cap_base_minor": CAP},
                                             "velocity": "refer"}})
    d = policy.decide(_featureless(1, velocity_missing=True))
    assert d.decision[0] == REVIEW  # the cap would approve; velocity's refer wins
    codes = _codes(policy, d.reason[0])
    assert {"D_FEATURES_UNAVAILABLE", "D_VELOCITY_UNAVAILABLE"} <= set(codes)


def test_per_product_overrides_apply_to_their_rows_only(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {
        "defaults": {"velocity": "refer"},
        "products": {"EQUIPMENT": {"velocity": {"mode": "cap", "cap_base_minor": CAP}}},
    })
    products = np.array([WC, EQUIPMENT, WC], dtype=np.int8)
    d = policy.decide(_inputs(3, product=products, velocity_missing=True))
    assert d.decision.tolist() == [REVIEW, APPROVE, REVIEW]
    assert d.approved_minor[1] == CAP


def test_builtin_defaults_refer_features_and_velocity_and_refuse_without_idempotency() -> None:
    cfg = load_policy().degraded
    assert cfg.mode(None, "features").mode == "refer"
    assert cfg.mode(None, "velocity").mode == "refer"
    assert cfg.mode(None, "idempotency").mode == "unavailable"
    assert cfg.mode("EQUIPMENT", "idempotency").mode == "unavailable"


# -- configuration errors name the key -----------------------------------------------------

BAD = [
    ({"defaults": {"featurez": "refer"}}, "degraded.defaults.featurez"),
    ({"defaults": {"velocity": {"mode": "cap"}}}, "degraded.defaults.velocity"),
    ({"defaults": {"idempotency": "sometimes"}}, "degraded.defaults.idempotency"),
    ({"defaults": {"velocity": {"mode": "refer", "cap_base_minor": 5}}}, "degraded.defaults.velocity"),
    ({"products": {"YACHTS": {"velocity": "refer"}}}, "YACHTS"),
    ({"products": {"EQUIPMENT": {"velocity": {"mode": "cap", "cap_base_minor": 10}}}},
     "degraded.products.EQUIPMENT.velocity.cap_base_minor"),
    ({"defaults": {"features": {"mode": "cap", "cap_base_minor": CAP, "grade": "Q"}}},
     "degraded.defaults.features.grade"),
    ({"fallback": "refer"}, "degraded.fallback"),
]


@pytest.mark.parametrize(("degraded", "named"), BAD)
def test_bad_degraded_sections_are_refused_naming_the_key(tmp_path: Path, degraded: dict[str, Any],
                                                          named: str) -> None:
    path = _policy_file(tmp_path, degraded)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(path) in str(info.value) and named in str(info.value)


# -- idempotency x mode (the real Replays over a store whose server is gone) ---------------

IDEMPOTENCY_TABLE = [
    # mode, status, decision, approved
    ("unavailable", Code.UNAVAILABLE, None, None),
    ("refer", Code.OK, REVIEW, 5_000_000),
    ({"mode": "cap", "cap_base_minor": CAP}, Code.OK, APPROVE, CAP),
]


def _decided_through(replays: Replays, n: int, products: np.ndarray) -> np.ndarray:
    """What the engine does around the decider: plan, decide (an APPROVE of 50,000.00), save."""
    keys = [f"anon|{uuid.uuid4().hex}" for _ in range(n)]
    fps = np.arange(1, n + 1, dtype=np.uint64)
    plan = replays.plan(keys, fps, np.zeros(n, dtype=bool), products)
    fresh = np.flatnonzero(plan.fresh)
    assert fresh.size == n  # the lookup failed: decided anyway, the save decides what is answered
    plan.rows["decision"][fresh] = APPROVE
    plan.rows["approved_minor"][fresh] = 5_000_000
    plan.rows["currency"][fresh] = CNY
    plan.rows["decision_id"][fresh] = b"d-1"
    plan.rows["fingerprint"][fresh] = fps
    replays.save(plan, fresh, keys)
    plan.finish()
    return plan.rows


@pytest.mark.parametrize(("mode", "status", "decision", "approved"), IDEMPOTENCY_TABLE)
def test_idempotency_unavailable(tmp_path: Path, mode: object, status: int, decision: int | None,
                                 approved: int | None) -> None:
    policy = _policy(tmp_path, {"defaults": {"idempotency": mode}})
    replays = Replays(dead_redis().idempotency(900, RECORD_SCHEMA), policy.version, policy.reason_table, policy)
    assert not replays.ready  # started with its store down, and said so
    rows = _decided_through(replays, 2, np.full(2, WC, dtype=np.int8))
    assert rows["status"].tolist() == [status] * 2
    if status != Code.OK:
        assert rows["decision_id"].tolist() == [b"", b""]  # nothing decided, nothing to replay
        return
    assert rows["decision"].tolist() == [decision] * 2
    assert rows["approved_minor"].tolist() == [approved] * 2
    assert rows["degraded"].all()
    for row in rows["reason"]:
        assert _codes(policy, row)[:2] == ["DEGRADED_MODE", "D_IDEMPOTENCY_UNAVAILABLE"]


def test_idempotency_modes_per_product_and_without_a_policy(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"products": {"EQUIPMENT": {"idempotency": "refer"}}})
    store = dead_redis().idempotency(900, RECORD_SCHEMA)
    replays = Replays(store, policy.version, policy.reason_table, policy)
    rows = _decided_through(replays, 2, np.array([WC, EQUIPMENT], dtype=np.int8))
    assert rows["status"].tolist() == [Code.UNAVAILABLE, Code.OK]  # the default refuses
    assert rows["decision"][1] == REVIEW
    bare = Replays(store, policy.version, policy.reason_table)  # no policy: never decide afresh
    rows = _decided_through(bare, 2, np.array([WC, EQUIPMENT], dtype=np.int8))
    assert rows["status"].tolist() == [Code.UNAVAILABLE] * 2


# -- the engine, built from real parts with one of them gone -------------------------------


def test_engine_velocity_down_flags_every_decision(clean_world: World, tmp_path: Path) -> None:
    world = clean_world
    """The reader's counts may be a minute old (its cache): decisions say so and are referred."""
    sqlite = SqliteBackend(feature_settings(world))
    reader = CachedReader(sqlite.reader(), ttl_s=60, max_entries=1000)
    policy = policy_for(world, load_policy(_policy_file(tmp_path, None)))
    engine = engine_of(world, policy, reader=reader, velocity=dead_redis().velocity())
    out = engine.score(batch(50))
    assert (out.status == Code.OK).all() and out["degraded"].all()
    assert APPROVE not in out["decision"].tolist()
    assert all("D_VELOCITY_UNAVAILABLE" in out.reason_codes(i) for i in range(50))
    assert not any("D_FEATURES_UNAVAILABLE" in out.reason_codes(i) for i in range(50))
    healthy = engine_of(world, policy, reader=sqlite.reader(), velocity=sqlite.velocity())
    ok = healthy.score(batch(50))
    assert not ok["degraded"].any() and APPROVE in ok["decision"].tolist()
    engine.close()
    healthy.close()


def test_engine_features_down_refers_or_refuses_by_product(clean_world: World, tmp_path: Path) -> None:
    world = clean_world
    config = load_policy(_policy_file(tmp_path, {"products": {"EQUIPMENT": {"features": "unavailable"}}}))
    engine = engine_of(world, policy_for(world, config), reader=dead_redis().reader(8))
    wc, eq = batch(5, product=WC), batch(5, product=EQUIPMENT)
    out = engine.score(wc)
    assert (out.status == Code.OK).all() and out["degraded"].all()
    assert set(out["decision"].tolist()) == {REVIEW} and set(out["approved_minor"].tolist()) == {0}
    assert all(out.reason_codes(i)[0] == "DEGRADED_MODE" for i in range(5))
    assert all("D_FEATURES_UNAVAILABLE" in out.reason_codes(i) for i in range(5))
    refused = engine.score(eq)
    assert (refused.status == Code.UNAVAILABLE).all() and refused.decision_ids() == [""] * 5
    engine.close()


def test_engine_idempotency_down_never_decides_afresh_silently(clean_world: World) -> None:
    world = clean_world
    sqlite = SqliteBackend(feature_settings(world))
    engine = engine_of(world, policy_for(world), reader=sqlite.reader(),
                       store=dead_redis().idempotency(900, RECORD_SCHEMA))
    b = batch(20)
    first = engine.score(b)
    again = engine.score(b)  # the caller's retry: the same answer (a refusal), not a new decision
    for out in (first, again):
        assert (out.status == Code.UNAVAILABLE).all()
        assert out.decision_ids() == [""] * 20
    engine.close()
