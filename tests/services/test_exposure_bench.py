"""What controls and exposure caps cost together: batch throughput on against off, one run.

Run: ``.venv/bin/pytest -q -s -p no:cacheprovider tests/services/test_exposure_bench.py``
(figures in docs/exposure.md). Three engines over the same small world with idempotency on:
"off" has no controls and no caps; "caps" four caps (every industry, region, product and
merchant its own counter; limits that bind rarely, so every approval is reserved in four
counters); "on" the same caps and the ten controls of the controls benchmark. Velocity is
not recorded: the same merchants apply again and again here, and velocity would soon refer
every one of them, leaving the caps nothing to reserve. Rounds alternate ABC CBA after a
warm-up round, batches of 512.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from features import TagCatalog, open_backend
from features.controls import ControlCache
from services.policy.decide import APPROVE
from services.schema.records import RECORD_SCHEMA
from services.scoring import ScoringEngine
from services.scoring.controls import Vocabulary
from tests.conftest import World, feature_settings
from tests.faults.support import engine_of, policy_for
from tests.services.test_controls import WAIT_S, batch, clear_all, ten_controls
from tests.services.test_exposure import cap, config

N = 512


def four_caps() -> list[dict[str, Any]]:
    return [
        cap("industry", "X_INDUSTRY_CAP", max_amount_base_minor=10**13),
        cap("region", "X_REGION_CAP", max_amount_base_minor=10**13, on_reached="refer"),
        cap("product", "X_PRODUCT_CAP", max_amount_base_minor=10**13, max_count=10**7),
        cap("merchant", "X_MERCHANT_CAP", max_amount_base_minor=10**10, max_count=10**5),
    ]


def _engine(world: World, caps: list[dict[str, Any]], controls: ControlCache | None) -> ScoringEngine:
    backend = open_backend(feature_settings(world))
    n_tags = len(TagCatalog.load(feature_settings(world)))
    policy = policy_for(world, config(caps))
    return engine_of(
        world, policy, reader=backend.reader(8 * ((n_tags + 63) // 64)), store=backend.idempotency(900, RECORD_SCHEMA),
        controls=controls, exposure=backend.exposure() if caps else None,
        vocabulary=Vocabulary.from_catalog(TagCatalog.load(feature_settings(world))),
    )


ARMS = ("off", "caps", "on")


def bench(world: World, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Per arm: median decisions per second, CPU and policy-stage ms per batch, approvals per batch."""
    fs = feature_settings(world)
    store = open_backend(fs).controls()
    vocab = Vocabulary.from_catalog(TagCatalog.load(fs))
    merchants = [f"M{i:08d}" for i in range(3000)]
    version = max(store.put(c).version for c in ten_controls(vocab, merchants))
    cache = ControlCache(open_backend(fs).controls()).start()
    assert cache.wait_for(version, WAIT_S)
    engines = {"off": _engine(world, [], None), "caps": _engine(world, four_caps(), None),
               "on": _engine(world, four_caps(), cache)}
    rng = np.random.default_rng(11)
    chosen = [[merchants[i] for i in rng.integers(0, 3000, N)] for _ in range(8)]
    runs: dict[str, list[float]] = {a: [] for a in ARMS}
    cpu: dict[str, list[float]] = {a: [] for a in ARMS}
    stage: dict[str, list[float]] = {a: [] for a in ARMS}
    approved: dict[str, list[int]] = {a: [] for a in ARMS}
    try:
        for k, arm in enumerate([*ARMS, *(["off", "caps", "on", "on", "caps", "off"] * rounds)]):
            reqs = [batch(m) for m in chosen]
            t0 = time.perf_counter()
            for b in reqs:
                c0 = time.thread_time()
                answer = engines[arm].score(b)
                spent = time.thread_time() - c0
                assert (answer.status == 0).all()
                if k >= len(ARMS):  # the first round warms caches and connections
                    cpu[arm].append(spent)
                    stage[arm].append(answer.stage_s["policy"])
                    approved[arm].append(int((answer["decision"] == APPROVE).sum()))
            if k >= len(ARMS):
                runs[arm].append(N * len(reqs) / (time.perf_counter() - t0))
    finally:
        clear_all(store)
        cache.close()
        for e in engines.values():
            e.close()
        store.close()
    return {arm: {"rate": float(np.median(runs[arm])), "cpu_ms": float(np.median(cpu[arm])) * 1000,
                  "policy_ms": float(np.median(stage[arm])) * 1000, "approved": float(np.median(approved[arm]))}
            for arm in ARMS}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_controls_and_caps_cost_on_batch_throughput(store: str, request: pytest.FixtureRequest) -> None:
    world: World = request.getfixturevalue("clean_world" if store == "sqlite" else "redis_world")
    try:
        r = bench(world)
    finally:
        if store == "redis":
            import redis

            client = redis.Redis()
            for key in client.scan_iter(match=f"{feature_settings(world).project}:exposure:*".encode(), count=1000):
                client.unlink(key)
    off = r["off"]
    print(f"\n{store}: batches of {N}, velocity off (so approvals stay approvals), ABC CBA rounds:")
    for arm in ARMS:
        a = r[arm]
        print(f"  {arm:>4}: {a['rate']:8,.0f}/s ({(a['rate'] / off['rate'] - 1) * 100:+5.1f}%), CPU/batch "
              f"{a['cpu_ms']:6.2f} ms ({(a['cpu_ms'] / off['cpu_ms'] - 1) * 100:+5.1f}%), policy stage "
              f"{a['policy_ms']:5.2f} ms, approvals/batch {a['approved']:.0f}")
    # The caps reserve every approval: the arms must have had approvals to reserve.
    assert r["caps"]["approved"] > 0 and r["on"]["approved"] > 0
    # The steady figure on a shared machine is the added time inside the engine, against the batch.
    share = (r["on"]["policy_ms"] - off["policy_ms"]) / off["cpu_ms"]
    print(f"controls and caps' own time (policy stage, on - off): {share * 100:.1f}% of a batch's CPU time")
