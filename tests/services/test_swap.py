"""Atomic hot swap under load: threads score continuously through a SwappableEngine on the
real store while a deployment is promoted, rolled back, and pointed at a tampered bundle.

Counts responses by (model, policy) version and errors: no error, every batch decided by
one version, both versions seen, the tampered bundle refused while the running one serves.
The swap pause (last old-version batch to first new-version batch) is printed with -s.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from features.settings import FeatureSettings
from features.training import training_frame
from services.bundles import Registry
from services.bundles.build import from_artifact, import_model
from services.bundles.deploy import promote, rollback
from services.schema.records import REQUEST_DTYPE, RequestBatch
from services.scoring.swap import SwappableEngine, SwapRecord
from services.settings import Settings, load_settings
from tests.conftest import World, feature_settings
from tests.e2e import conftest as e2e
from tests.services.test_bundles import SMALL, _lgb_model, policy_variant, tags_of

Setup = tuple[Registry, str, str, Settings]
THREADS = 3
BATCH = 64
WAIT_S = 60.0  # bound of every wait on observed state
ray_cluster = e2e.ray_cluster  # the local Ray cluster the end-to-end tests share


Batch = tuple[int, float, float, frozenset[tuple[bytes, bytes]]]  # thread, start, end, versions


@dataclass
class Seen:
    """What the scoring threads observed, batch by batch (appended under the GIL, read after)."""

    batches: list[Batch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def add(self, item: Batch | None, error: str | None = None) -> None:
        with self.changed:
            if item is not None:
                self.batches.append(item)
            if error is not None:
                self.errors.append(error)
            self.changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Wait on the scoring threads' notifications (one per batch) until ``condition`` holds."""
        with self.changed:
            if not self.changed.wait_for(condition, timeout=WAIT_S):
                raise AssertionError(f"not within {WAIT_S}s: {what}")

    def versions(self) -> Counter[tuple[bytes, bytes]]:
        return Counter(v for *_t, vs in self.batches for v in vs)

    def count(self, version: tuple[bytes, bytes]) -> int:
        return sum(1 for *_t, vs in self.batches if version in vs)


def batch(rng: np.random.Generator) -> RequestBatch:
    r = np.zeros(BATCH, REQUEST_DTYPE)
    r["application_id"] = [f"sw-{uuid.uuid4().hex}".encode() for _ in range(BATCH)]
    r["merchant_id"] = [f"M{int(i):08d}".encode() for i in rng.integers(0, 3000, BATCH)]
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = 500_000, 0, 12, 1, 1
    r["declared_revenue_minor"] = float("nan")
    r["deadline"] = time.time() + 600
    return RequestBatch.of_records([row.tobytes() for row in r])


@pytest.fixture(scope="module")
def setup(clean_world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("swap")
    reg = Registry(tmp / "registry")
    tags = tags_of(clean_world)
    a = reg.put(from_artifact(clean_world.data_dir, clean_world.model_version, policy_path=None, tags=tags))
    model = _lgb_model(clean_world, list(SMALL), tmp / "small.txt")
    rows = training_frame(FeatureSettings(data_dir=clean_world.data_dir))[0]
    b = reg.put(import_model(model, policy_path=policy_variant(tmp, "policy-swap-b", 2.0), tags=tags,
                             catalogue_sample=rows, version="small-b"))
    promote(reg, "prod", a, tags=tags)
    settings = load_settings(None, {
        "features": feature_settings(clean_world).model_dump(),
        "bundle": {"registry": str(tmp / "registry"), "deployment": "prod", "poll_interval_s": 0.05},
    })
    yield reg, a, b, settings


def test_swap_and_rollback_under_load(setup: Setup, clean_world: World) -> None:
    reg, a, b, settings = setup
    tags = tags_of(clean_world)
    engine = SwappableEngine.open(settings).start()
    v_a = (engine.model_version.encode(), engine.policy_version.encode())
    v_b = (b"small-b", b"policy-swap-b")
    seen, stop = Seen(), threading.Event()

    def score(k: int) -> None:
        rng = np.random.default_rng(k)
        while not stop.is_set():
            req = batch(rng)
            t0 = time.perf_counter()
            try:
                resp = engine.score(req)
            except Exception as exc:  # every failure is counted and asserted on
                seen.add(None, repr(exc))
                continue
            t1 = time.perf_counter()
            bad = f"status {set(resp.status.tolist())}" if (resp.status != 0).any() else None
            versions = frozenset(zip(resp["model_version"].tolist(), resp["policy_version"].tolist(), strict=True))
            seen.add((k, t0, t1, versions), bad)

    threads = [threading.Thread(target=score, args=(k,), daemon=True) for k in range(THREADS)]
    for t in threads:
        t.start()
    try:
        seen.wait_for(lambda: seen.count(v_a) >= 20, "batches on the first bundle")
        promote(reg, "prod", b, tags=tags)
        engine.reload()
        seen.wait_for(lambda: engine.bundle_id == b, "the swap to the promoted bundle")
        seen.wait_for(lambda: seen.count(v_b) >= 20, "batches on the promoted bundle")
        mark = len(seen.batches)
        rollback(reg, "prod", tags=tags)
        engine.reload()
        seen.wait_for(lambda: engine.bundle_id == a, "the swap back on rollback")
        seen.wait_for(lambda: sum(1 for s in seen.batches[mark:] if v_a in s[3]) >= 20, "batches after the rollback")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=WAIT_S)
        swaps = list(engine.swaps)
        engine.close()

    assert seen.errors == []
    assert all(len(vs) == 1 for *_t, vs in seen.batches), "a batch mixed versions"
    counts = seen.versions()
    assert set(counts) == {v_a, v_b} and min(counts.values()) >= 20, counts
    assert [(s.before, s.after) for s in swaps] == [(a, b), (b, a)]
    report_pauses(seen, swaps)


def report_pauses(seen: Seen, swaps: list[SwapRecord]) -> None:
    """Per swap and scoring thread: how long the thread was not scoring across the swap (the
    end of its last batch on the old bundle to the start of its first on the new), and the
    first new batch's time against the median batch."""
    typical = statistics.median(e - s for _k, s, e, _v in seen.batches)
    gaps = []  # between a thread's consecutive batches, swap or not: what "idle" is compared with
    for k in range(THREADS):
        mine = sorted((s, e) for t, s, e, _v in seen.batches if t == k)
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(mine)]
    usual = statistics.median(gaps)
    for swap in swaps:
        idle, first = [], []
        for k in range(THREADS):
            mine = [(s, e) for t, s, e, _v in seen.batches if t == k]
            old = [e for s, e in mine if s < swap.at]
            new = [(s, e) for s, e in mine if s >= swap.at]
            if old and new:
                idle.append(new[0][0] - max(old))
                first.append(new[0][1] - new[0][0])
        print(f"\nswap {swap.before[:8]}->{swap.after[:8]}: prepared off the hot path in {swap.prepare_s * 1e3:.1f} ms;"
              " "
              f"threads idle across it max {max(idle) * 1e3:.3f} ms; first new batch {max(first) * 1e3:.1f} ms vs "
              f"median batch {typical * 1e3:.1f} ms; median gap between batches {usual * 1e3:.3f} ms, p99 "
              f"{np.percentile(gaps, 99) * 1e3:.3f} ms ({THREADS} threads, {BATCH}/batch)")
        # Scoring never waits for a swap (a wait would be the whole preparation, often several
        # batches); one extra batch of slack for the noise of a shared machine.
        assert idle and max(idle) < 2 * typical, (idle, typical)


def test_tampered_promoted_bundle_is_refused_and_the_running_one_keeps_serving(
    setup: Setup, clean_world: World, tmp_path: Path
) -> None:
    reg, a, b, settings = setup
    tags = tags_of(clean_world)
    promote(reg, "prod", a, tags=tags)
    engine = SwappableEngine.open(settings)
    try:
        assert engine.bundle_id == a and engine.check() is None
        promote(reg, "prod", b, tags=tags)  # valid when promoted ...
        policy = Path(reg.bundle_dir(b)) / "policy.yaml"
        original = policy.read_bytes()
        policy.write_bytes(original.replace(b"policy-swap-b", b"policy-swap-c"))  # ... then edited in place
        try:
            assert engine.check() is None  # refused
            assert engine.bundle_id == a and "tampered" in engine.refused[b]
            resp = engine.score(batch(np.random.default_rng(9)))
            assert (resp.status == 0).all() and set(resp["model_version"].tolist()) == {engine.model_version.encode()}
        finally:
            policy.write_bytes(original)
        # Put right and promoted again (a new index version): now it swaps.
        rollback(reg, "prod", tags=tags)
        promote(reg, "prod", b, tags=tags)
        record = engine.check()
        assert record is not None and record.after == b and engine.policy_version == "policy-swap-b"
    finally:
        engine.close()


def test_the_watcher_follows_promotions_without_being_asked(
    setup: Setup, clean_world: World
) -> None:
    reg, a, b, settings = setup
    tags = tags_of(clean_world)
    promote(reg, "prod", a, tags=tags)
    engine = SwappableEngine.open(settings).start()
    try:
        assert engine.bundle_id == a
        promote(reg, "prod", b, tags=tags)  # no reload(): the poll (every 0.05 s here) finds it
        assert engine.wait_for(b, WAIT_S) and engine.model_version == "small-b"
        rollback(reg, "prod", tags=tags)
        assert engine.wait_for(a, WAIT_S) and engine.policy_version == "policy-2026.11.1"
        assert [s.after for s in engine.swaps] == [b, a]
    finally:
        engine.close()


def test_a_replica_picks_its_engine_from_the_settings(setup: Setup,
                                                      clean_world: World) -> None:
    from services.errors import ConfigError
    from services.scoring import ScoringEngine
    from services.scoring.swap import serving_engine

    _reg, a, _b, settings = setup
    fixed = serving_engine(settings.model_copy(update={"bundle": None}))
    try:
        assert isinstance(fixed, ScoringEngine) and fixed.model_version == clean_world.model_version
    finally:
        fixed.close()
    followed = serving_engine(settings)
    try:
        assert isinstance(followed, SwappableEngine) and followed.bundle_id == a
    finally:
        followed.close()
    assert settings.bundle is not None
    elsewhere = settings.model_copy(update={"bundle": settings.bundle.model_copy(update={"deployment": "nope"})})
    with pytest.raises(ConfigError, match=r"no deployment 'nope' \(run `creditauth bundle promote nope BUNDLE`"):
        serving_engine(elsewhere)


@pytest.mark.e2e
@pytest.mark.slow
def test_ray_replicas_follow_the_deployment_over_grpc(setup: Setup, clean_world: World, ray_cluster: object) -> None:
    """Real Ray Serve replicas (direct channel) behind the real gRPC front end: a promotion
    reaches the answers with no failed request, and each answer names one version."""
    import grpc

    from creditauth.v1 import authorization_pb2_grpc as pb_grpc
    from services.stack import Stack
    from tests.e2e.api_checks import request
    from tests.e2e.conftest import ray_settings

    reg, a, b, settings = setup
    tags = tags_of(clean_world)
    promote(reg, "prod", a, tags=tags)
    lt = ray_cluster
    stack = Stack(ray_settings(clean_world, "creditauth_bundles").model_copy(update={"bundle": settings.bundle}))
    lt.run(stack.__aenter__())  # type: ignore[attr-defined]
    seen: Counter[tuple[str, str]] = Counter()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            first = stub.Authorize(request(0), timeout=120, wait_for_ready=True)
            assert first.model_version == clean_world.model_version
            promote(reg, "prod", b, tags=tags)
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:  # each call is the observation; an RPC error fails the test
                r = stub.Authorize(request(len(seen)), timeout=30)
                assert not r.HasField("error"), r.error
                seen[(r.model_version, r.policy_version)] += 1
                if r.model_version == "small-b":
                    break
    finally:
        lt.run(stack.__aexit__(None, None, None))  # type: ignore[attr-defined]
    assert seen[("small-b", "policy-swap-b")] == 1, seen
    assert set(seen) <= {("small-b", "policy-swap-b"), (clean_world.model_version, "policy-2026.11.1")}, seen
