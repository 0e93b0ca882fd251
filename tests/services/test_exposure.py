"""Exposure caps in the engine: decision tables per cap scope and policy, expiry, replays,
releases, many concurrent engines against a small cap (both stores), a dead counter store.

Real parts: engines over the small world's model and SQLite online store, the SQLite and
Redis exposure stores (a project prefix of the test's own on the shared Redis), a Redis
that is gone for the degraded rows. Each test's caps have names of their own, so their
counters start empty.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from features import MATRIX_COLUMNS, TagCatalog, open_backend
from features.exposure import CapLimit, ExposureState
from services.errors import ConfigError
from services.policy import PolicyConfig, load_policy
from services.policy.decide import APPROVE, REVIEW
from services.schema.codes import Code
from services.schema.enums import PRODUCTS
from services.schema.records import RECORD_SCHEMA, REQUEST_DTYPE, DecisionBatch, RequestBatch
from services.scoring import ScoringEngine
from tests.conftest import World, feature_settings
from tests.faults.support import dead_redis, engine_of, policy_for

AMOUNT = 500_000  # 5,000.00 CNY asked by every request (CNY minor units are base minor units)
MIN_OFFER = load_policy().min_limit_base_minor
WC = PRODUCTS.index("WORKING_CAPITAL") + 1
MCA = PRODUCTS.index("MERCHANT_CASH_ADVANCE") + 1


def cap(scope: str, code: str = "X_CAP", **kw: Any) -> dict[str, Any]:
    """A cap with a name of its own (fresh counters), an hour's window."""
    return {"name": f"t{uuid.uuid4().hex[:10]}", "scope": scope, "window_s": 3600, "code": code,
            "description": f"test cap on {scope}", **kw}


def config(caps: list[dict[str, Any]], degraded: dict[str, Any] | None = None) -> PolicyConfig:
    doc = load_policy().model_dump(mode="json")
    doc["exposure"] = {"caps": caps}
    if degraded is not None:
        doc["degraded"] = degraded
    return PolicyConfig.model_validate(doc)


def requests(merchants: list[str], product: int = WC, ids: list[str] | None = None) -> RequestBatch:
    r = np.zeros(len(merchants), REQUEST_DTYPE)
    r["application_id"] = [(a or f"x-{uuid.uuid4().hex}").encode() for a in (ids or [""] * len(merchants))]
    r["merchant_id"] = [m.encode() for m in merchants]
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = AMOUNT, 0, 12, product, 1
    r["declared_revenue_minor"] = np.nan
    r["deadline"] = time.time() + 3600
    return RequestBatch(r)


def approved_total(resp: DecisionBatch) -> int:
    ok = (resp.status == Code.OK) & (resp["decision"] == APPROVE)
    return int(resp["approved_minor"][ok].sum())


@dataclass
class Lab:
    world: World
    tag_bytes: int
    good: list[str]  # merchants approved for AMOUNT in full without caps (WC and MCA alike)
    region: dict[str, int]
    industry: dict[str, int]

    def engine(self, caps: list[dict[str, Any]], *, exposure: ExposureState | None = None,
               degraded: dict[str, Any] | None = None, **parts: Any) -> tuple[ScoringEngine, ExposureState]:
        backend = open_backend(feature_settings(self.world))
        state = exposure or backend.exposure()
        parts.setdefault("store", backend.idempotency(900, RECORD_SCHEMA))
        e = engine_of(self.world, policy_for(self.world, config(caps, degraded)), reader=backend.reader(self.tag_bytes),
                      exposure=state, **parts)
        return e, state


@pytest.fixture(scope="module")
def lab(clean_world: World) -> Iterator[Lab]:
    n_tags = len(TagCatalog.load(feature_settings(clean_world)))
    tag_bytes = 8 * ((n_tags + 63) // 64)
    backend = open_backend(feature_settings(clean_world))
    merchants = [f"M{i:08d}" for i in range(400)]
    e = engine_of(clean_world, policy_for(clean_world), reader=backend.reader(tag_bytes))
    full = np.ones(len(merchants), bool)
    for product in (WC, MCA):
        resp = e.score(requests(merchants, product))
        full &= (resp["decision"] == APPROVE) & (resp["approved_minor"] == AMOUNT)
    e.close()
    good = [m for m, ok in zip(merchants, full, strict=True) if ok]
    assert len(good) >= 40, "the small world should approve dozens of merchants in full"
    feats = backend.reader(tag_bytes).read(good)
    region = dict(zip(good, feats.matrix[:, MATRIX_COLUMNS.index("region_code")].astype(int).tolist(), strict=True))
    industry = dict(zip(good, feats.matrix[:, MATRIX_COLUMNS.index("industry_code")].astype(int).tolist(),
                        strict=True))
    yield Lab(clean_world, tag_bytes, good, region, industry)


def limit_of(spec: dict[str, Any]) -> CapLimit:
    return CapLimit(spec["name"], spec["window_s"], spec.get("max_amount_base_minor"), spec.get("max_count"),
                    spec.get("on_reached") == "refer")


# -- decision tables -------------------------------------------------------------------------

# max amount (in requests of AMOUNT), on_reached -> per request: (decision, approved, cap code named)
PRODUCT_TABLE = [
    (2.4, "reduce", [(APPROVE, AMOUNT, False), (APPROVE, AMOUNT, False), (APPROVE, 200_000, True),
                     (REVIEW, AMOUNT, True)]),
    (2.4, "refer", [(APPROVE, AMOUNT, False), (APPROVE, AMOUNT, False), (REVIEW, AMOUNT, True),
                    (REVIEW, AMOUNT, True)]),
    # What remains (20,000 of 500,000 after two) is below the minimum offer: refer, not reduce.
    (2.04, "reduce", [(APPROVE, AMOUNT, False), (APPROVE, AMOUNT, False), (REVIEW, AMOUNT, True),
                      (REVIEW, AMOUNT, True)]),
    (10, "reduce", [(APPROVE, AMOUNT, False)] * 4),
]


@pytest.mark.parametrize(("times", "on_reached", "expect"), PRODUCT_TABLE)
def test_product_cap(lab: Lab, times: float, on_reached: str, expect: list[tuple[int, int, bool]]) -> None:
    spec = cap("product", "X_PRODUCT_CAP", values=["WORKING_CAPITAL"], on_reached=on_reached,
               max_amount_base_minor=int(times * AMOUNT))
    e, state = lab.engine([spec])
    resp = e.score(requests(lab.good[:4]))
    got = [(int(d), int(a), "X_PRODUCT_CAP" in resp.reason_codes(i))
           for i, (d, a) in enumerate(zip(resp["decision"], resp["approved_minor"], strict=True))]
    assert got == expect
    for i, (d, a, named) in enumerate(expect):
        codes = resp.reason_codes(i)
        if named:
            assert codes[0] == "X_PRODUCT_CAP"  # the cap's reason comes first
        assert ("AMOUNT_REDUCED" in codes) == (d == APPROVE and a < AMOUNT)
    assert state.usage(limit_of(spec), "WORKING_CAPITAL", time.time()) == (
        approved_total(resp), int((resp["decision"] == APPROVE).sum()))
    # Another product is outside the cap's values: untouched, nothing reserved for it.
    other = e.score(requests(lab.good[4:8], MCA))
    assert (other["decision"] == APPROVE).all() and not any("X_PRODUCT_CAP" in c for c in map(other.reason_codes,
                                                                                               range(4)))
    e.close()


def test_merchant_count_cap_refers_the_third_application(lab: Lab) -> None:
    spec = cap("merchant", "X_MERCHANT_CAP", max_count=2, on_reached="reduce")
    e, _ = lab.engine([spec])
    m, other = lab.good[0], lab.good[1]
    resp = e.score(requests([m, m, other, m]))  # distinct application ids: three applications of m
    assert resp["decision"].tolist() == [APPROVE, APPROVE, APPROVE, REVIEW]
    assert resp.reason_codes(3)[0] == "X_MERCHANT_CAP"
    assert not any("X_MERCHANT_CAP" in resp.reason_codes(i) for i in range(3))
    e.close()


@pytest.mark.parametrize("scope", ["region", "industry"])
def test_segment_cap_with_a_value_filter_caps_only_that_value(lab: Lab, scope: str) -> None:
    codes = lab.region if scope == "region" else lab.industry
    target = max(set(codes.values()), key=list(codes.values()).count)
    inside = [m for m in lab.good if codes[m] == target][:3]
    outside = [m for m in lab.good if codes[m] != target][:3]
    assert len(inside) == 3 and len(outside) == 3
    spec = cap(scope, "X_SEGMENT_CAP", values=[target], max_amount_base_minor=AMOUNT, on_reached="refer")
    e, state = lab.engine([spec])
    resp = e.score(requests(inside + outside))
    assert resp["decision"].tolist() == [APPROVE, REVIEW, REVIEW, APPROVE, APPROVE, APPROVE]
    assert ["X_SEGMENT_CAP" in resp.reason_codes(i) for i in range(6)] == [False, True, True, False, False, False]
    assert state.usage(limit_of(spec), str(target), time.time()) == (AMOUNT, 1)
    e.close()


def test_every_value_has_its_own_counter_without_a_filter(lab: Lab) -> None:
    spec = cap("merchant", max_amount_base_minor=AMOUNT + 100_000)
    e, _ = lab.engine([spec])
    a, b = lab.good[2], lab.good[3]
    resp = e.score(requests([a, b, a, b]))
    assert resp["approved_minor"].tolist() == [AMOUNT, AMOUNT, 100_000, 100_000]
    e.close()


def test_reservations_lapse_after_the_window(lab: Lab) -> None:
    spec = cap("product", values=["WORKING_CAPITAL"], max_amount_base_minor=AMOUNT, window_s=600)
    e, state = lab.engine([spec])
    t0 = time.time()
    first = e.score(requests(lab.good[:2]), t0)
    assert first["decision"].tolist() == [APPROVE, REVIEW]
    assert e.score(requests(lab.good[2:3]), t0 + 599)["decision"].tolist() == [REVIEW]
    # The window has passed: the first reservation is released, a new approval fits.
    later = e.score(requests(lab.good[2:4]), t0 + 600)
    assert later["decision"].tolist() == [APPROVE, REVIEW]
    assert state.usage(limit_of(spec), "WORKING_CAPITAL", t0 + 600) == (AMOUNT, 1)
    e.close()


def test_replays_and_repeats_do_not_reserve_twice(lab: Lab) -> None:
    spec = cap("product", values=["WORKING_CAPITAL"], max_amount_base_minor=3 * AMOUNT)
    e, state = lab.engine([spec])
    ids = [f"rp-{uuid.uuid4().hex}" for _ in range(2)]
    first = e.score(requests(lab.good[:2], ids=ids))
    again = e.score(requests(lab.good[:2] + lab.good[:1], ids=[*ids, ids[0]]))
    assert again.rows[:2].tobytes() == first.rows.tobytes()
    assert state.usage(limit_of(spec), "WORKING_CAPITAL", time.time()) == (2 * AMOUNT, 2)
    # A second engine (another replica) replays the same decisions without reserving either.
    e2, _ = lab.engine([spec])
    assert e2.score(requests(lab.good[:2], ids=ids)).rows.tobytes() == first.rows.tobytes()
    assert state.usage(limit_of(spec), "WORKING_CAPITAL", time.time()) == (2 * AMOUNT, 2)
    e.close()
    e2.close()


def test_unanswered_approvals_are_released(lab: Lab) -> None:
    """The idempotency store is gone (mode unavailable): nothing is answered, so nothing stays reserved."""
    spec = cap("product", values=["WORKING_CAPITAL"], max_amount_base_minor=10 * AMOUNT)
    e, state = lab.engine([spec], store=dead_redis().idempotency(900, RECORD_SCHEMA))
    resp = e.score(requests(lab.good[:3]))
    assert (resp.status == Code.UNAVAILABLE).all()
    assert state.usage(limit_of(spec), "WORKING_CAPITAL", time.time()) == (0, 0)
    e.close()


def test_a_policy_with_caps_needs_a_store(lab: Lab) -> None:
    backend = open_backend(feature_settings(lab.world))
    with pytest.raises(ConfigError, match="exposure"):
        engine_of(lab.world, policy_for(lab.world, config([cap("product", max_count=1)])),
                  reader=backend.reader(lab.tag_bytes))


# -- the counters unreachable: the exposure degraded mode ------------------------------------

DEGRADED_TABLE = [
    # mode -> (decision, approved, status) of an approval the cap covers
    ("refer", (REVIEW, AMOUNT, Code.OK)),
    ({"mode": "cap", "cap_base_minor": 200_000}, (APPROVE, 200_000, Code.OK)),
    ("unavailable", (None, None, Code.UNAVAILABLE)),
]


@pytest.mark.parametrize(("mode", "expect"), DEGRADED_TABLE)
def test_dead_counter_store_applies_the_exposure_mode(lab: Lab, mode: object,
                                                      expect: tuple[int | None, int | None, int]) -> None:
    decision, approved, status = expect
    spec = cap("product", values=["WORKING_CAPITAL"], max_amount_base_minor=100 * AMOUNT)
    e, _ = lab.engine([spec], exposure=dead_redis().exposure(), degraded={"defaults": {"exposure": mode}})
    wc = e.score(requests(lab.good[:2]))
    assert wc.status.tolist() == [status] * 2
    assert not e.ready
    if status == Code.OK:
        assert wc["decision"].tolist() == [decision] * 2 and wc["approved_minor"].tolist() == [approved] * 2
        assert wc["degraded"].all()
        for i in range(2):
            assert wc.reason_codes(i)[:2] == ["DEGRADED_MODE", "D_EXPOSURE_UNAVAILABLE"]
    # Approvals no cap covers need no counter: decided as usual, not degraded.
    mca = e.score(requests(lab.good[:2], MCA))
    assert (mca["decision"] == APPROVE).all() and not mca["degraded"].any()
    e.close()


def test_exposure_mode_per_product(lab: Lab) -> None:
    spec = cap("merchant", max_amount_base_minor=100 * AMOUNT)
    degraded = {"defaults": {"exposure": "refer"},
                "products": {"MERCHANT_CASH_ADVANCE": {"exposure": {"mode": "cap", "cap_base_minor": 100_000}}}}
    e, _ = lab.engine([spec], exposure=dead_redis().exposure(), degraded=degraded)
    wc, mca = e.score(requests(lab.good[:1])), e.score(requests(lab.good[:1], MCA))
    assert (wc["decision"][0], mca["decision"][0], mca["approved_minor"][0]) == (REVIEW, APPROVE, 100_000)
    e.close()


# -- many engines, one small cap ---------------------------------------------------------------

def _concurrent(lab: Lab, world: World, engines: int = 8, batches: int = 10) -> None:
    """``engines`` engines (each its own store connections: replicas), barrier-started, each
    deciding ``batches`` batches of 4 against one small cap: the approvals sum exactly to what
    the store holds, never above the cap, and the cap is used up."""
    limit = 7 * AMOUNT + 123_456  # the 8th approval is reduced to 123,456, the rest refer
    spec = cap("product", "X_PRODUCT_CAP", values=["WORKING_CAPITAL"], max_amount_base_minor=limit)
    # The merchants this world's store approves in full now (other tests record velocity in
    # the shared Redis world): without caps, every item asked below would be approved.
    base, _ = Lab(world, lab.tag_bytes, lab.good, {}, {}).engine([])
    first = base.score(requests(lab.good))
    base.close()
    good = [m for m, d, a in zip(lab.good, first["decision"], first["approved_minor"], strict=True)
            if d == APPROVE and a == AMOUNT]
    assert len(good) >= 8
    built = [Lab(world, lab.tag_bytes, good, {}, {}).engine([spec]) for _ in range(engines)]
    barrier = threading.Barrier(engines)
    answers: list[list[DecisionBatch]] = [[] for _ in range(engines)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        e, _ = built[k]
        try:
            barrier.wait(30)
            for b in range(batches):
                picked = [good[(k * batches * 4 + b * 4 + i) % len(good)] for i in range(4)]
                answers[k].append(e.score(requests(picked)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(engines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and all(len(a) == batches for a in answers)
    resp = [r for a in answers for r in a]
    total = sum(approved_total(r) for r in resp)
    approvals = sum(int(((r.status == Code.OK) & (r["decision"] == APPROVE)).sum()) for r in resp)
    held = built[0][1].usage(limit_of(spec), "WORKING_CAPITAL", time.time())
    assert held == (total, approvals)
    # Exact, within the cap and used up: seven in full, the eighth reduced to what remained.
    assert total == limit and approvals == 8
    # Every item the cap reached names it.
    referred = [(r, i) for r in resp for i in range(len(r)) if r["decision"][i] == REVIEW]
    assert referred and all("X_PRODUCT_CAP" in r.reason_codes(i) for r, i in referred)
    for e, _ in built:
        e.close()


def test_many_engines_never_overdraw_a_small_cap_sqlite(lab: Lab) -> None:
    _concurrent(lab, lab.world)


def test_many_engines_never_overdraw_a_small_cap_redis(lab: Lab, redis_world: World) -> None:
    import redis

    try:
        _concurrent(lab, redis_world)
    finally:
        project = feature_settings(redis_world).project
        client = redis.Redis()
        for key in client.scan_iter(match=f"{project}:exposure:*".encode(), count=1000):
            client.unlink(key)
