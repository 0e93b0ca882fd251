"""The operator controls as a degraded input: their store unreachable beyond the policy's
``degraded.controls_max_age_s``, every decision is made in the controls' degraded mode
(per product), flagged and naming ``D_CONTROLS_UNAVAILABLE``; within it, and once the store
answers again, decisions are made as usual. The features stay reachable throughout (the
controls go through their own fault proxy), so only the controls are missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from features.controls import ControlCache
from features.stores.redis import RedisBackend
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import open_log
from services.policy import load_policy
from services.policy.decide import APPROVE, REVIEW
from services.schema.codes import Code
from services.scoring import ScoringEngine
from tests.faults.logcheck import Recorded, closed_log_is_exact
from tests.faults.proxy import FaultProxy, wait_until
from tests.faults.support import MAX_AGE_S, RedisWorld, batch, policy_for

MAX_CONTROLS_AGE_S = 0.5


@pytest.fixture()
def setup(
    redis_world: RedisWorld, proxy: FaultProxy, tmp_path: Path
) -> Iterator[tuple[Recorded, ControlCache]]:
    from features import TagCatalog
    from services.models import load_artifact

    doc = load_policy().model_dump()
    doc["degraded"] = {"controls_max_age_s": MAX_CONTROLS_AGE_S, "defaults": {"controls": "refer"},
                       "products": {"MERCHANT_CASH_ADVANCE": {"controls": "unavailable"}}}
    policy = policy_for(redis_world.world, type(load_policy()).model_validate(doc))
    direct = RedisBackend(redis_world.settings(redis_world.redis_port))  # features: always reachable
    through = RedisBackend(redis_world.settings(proxy.port))  # controls: behind the proxy
    cache = ControlCache(through.controls(), poll_s=0.05).start()
    artifact = load_artifact(redis_world.world.data_dir, redis_world.world.model_version)
    n_tags = len(TagCatalog.load(direct.settings))
    engine = Recorded(ScoringEngine(direct.reader(8 * ((n_tags + 63) // 64)), artifact, policy, MAX_AGE_S,
                                    velocity=direct.velocity(), controls=cache,
                                    decision_log=open_log(DecisionLogSettings(), tmp_path)))
    try:
        yield engine, cache
    finally:
        engine.close()


def _codes(out, i: int) -> list[str]:  # type: ignore[no-untyped-def]
    return out.reason_codes(i)


def test_controls_out_of_reach_beyond_their_age_are_a_missing_input(
    setup: tuple[Recorded, ControlCache], proxy: FaultProxy, tmp_path: Path
) -> None:
    engine, cache = setup
    fresh = engine.score(batch(60))
    assert (fresh.status == Code.OK).all() and not fresh.rows["degraded"].any()
    assert (fresh.rows["decision"] == APPROVE).any() and engine.ready
    assert not any("D_CONTROLS_UNAVAILABLE" in _codes(fresh, i) for i in range(60))

    proxy.reset()  # the controls' store is gone; the features are not
    wait_until(lambda: cache.age_s() > MAX_CONTROLS_AGE_S, "the controls' set outlived its age")
    out = engine.score(batch(60, first=200))
    mca = engine.score(batch(20, product=4, first=100))  # MERCHANT_CASH_ADVANCE: unavailable
    assert (out.status == Code.OK).all() and out.rows["degraded"].all()
    assert not (out.rows["decision"] == APPROVE).any()  # refer: nothing approved blind to the brakes
    assert (out.rows["decision"] == REVIEW).sum() > (fresh.rows["decision"] == REVIEW).sum()
    assert all(_codes(out, i)[:2] == ["DEGRADED_MODE", "D_CONTROLS_UNAVAILABLE"] for i in range(60))
    assert (mca.status == Code.UNAVAILABLE).all()
    assert not engine.ready

    proxy.pass_through()
    wait_until(lambda: cache.age_s() < MAX_CONTROLS_AGE_S / 2, "the controls' store confirmed the set again")
    back = engine.score(batch(60, first=400))
    assert (back.status == Code.OK).all() and not back.rows["degraded"].any() and engine.ready
    assert (back.rows["decision"] == APPROVE).any()
    # The log, closed: each decision once (the degraded ones too), the refused ones as refusals.
    logged = closed_log_is_exact(engine, tmp_path)
    assert logged.decisions == 180 and logged.refused == 20, logged.summary()
