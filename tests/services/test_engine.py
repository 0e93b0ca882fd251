"""The scoring engine on the real small world: decisions, deadlines, idempotency."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from features.stores.redis import RedisBackend
from features.stores.sqlite.idempotency import SqliteIdempotency as SqliteStore
from services.policy.decide import APPROVE, DECLINE, REVIEW
from services.schema.codes import Code
from services.schema.records import REQUEST_DTYPE, RequestBatch
from services.scoring import ScoringEngine
from services.scoring.factory import build_engine
from services.settings import load_settings
from tests.conftest import World, feature_settings, requires_redis


def _settings(world: World, window: float = 900.0):  # type: ignore[no-untyped-def]
    return load_settings(
        None,
        {"features": feature_settings(world).model_dump(), "serving": {"idempotency_window_s": window}},
    )


@pytest.fixture(scope="module")
def engine(world: World) -> Iterator[ScoringEngine]:
    e = build_engine(_settings(world))
    yield e
    e.close()


def item(merchant: str = "M00000010", app: str | None = None, amount: int = 500_000, deadline: float = 0.0) -> bytes:
    """One request record (as the front end's codec decodes it)."""
    r = np.zeros(1, REQUEST_DTYPE)
    r["application_id"] = (app or f"t-{uuid.uuid4().hex}").encode()
    r["merchant_id"] = merchant.encode()
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = amount, 0, 12, 1, 1
    r["declared_revenue_minor"] = float("nan")
    r["deadline"] = deadline or time.time() + 60
    return r.tobytes()


def to_batch(records: list[bytes]) -> RequestBatch:
    return RequestBatch.of_records(records)


def test_known_and_unknown_merchants(engine: ScoringEngine) -> None:
    resp = engine.score(to_batch([item(f"M{i:08d}") for i in range(200)] + [item("NOBODY")]))
    assert (resp.status == 0).all()
    assert set(resp["decision"][:200].tolist()) <= {APPROVE, DECLINE, REVIEW}
    pd = resp["pd"]
    assert np.isfinite(pd[:200]).all() and ((pd[:200] > 0) & (pd[:200] < 1)).all()
    assert np.isnan(pd[200]) and resp["decision"][200] == REVIEW
    assert resp.reason_codes(200)[0] == "NO_HISTORY"
    ids = resp.decision_ids()
    assert len(set(ids)) == 201 and all(ids)
    assert set(resp["model_version"].tolist()) == {engine.model_version.encode()}
    assert set(resp["policy_version"].tolist()) == {engine.policy_version.encode()}
    assert resp["application_id"][200] != b"" and set(resp["currency"].tolist()) == {0}


def test_expired_items_are_not_scored(engine: ScoringEngine) -> None:
    past = time.time() - 1
    resp = engine.score(to_batch([item(deadline=past), item()]))
    assert resp.status.tolist() == [Code.DEADLINE_EXCEEDED, 0]
    assert resp.decision_ids()[0] == ""


def test_same_application_same_decision(engine: ScoringEngine) -> None:
    app = f"idem-{uuid.uuid4().hex}"
    first = engine.score(to_batch([item("M00000020", app)]))
    again = engine.score(to_batch([item("M00000020", app)]))
    assert again.decision_ids() == first.decision_ids()
    assert again.rows.tobytes() == first.rows.tobytes()


def test_reused_id_with_another_request_is_refused(engine: ScoringEngine) -> None:
    app = f"idem-{uuid.uuid4().hex}"
    engine.score(to_batch([item("M00000021", app, amount=100_000)]))
    other = engine.score(to_batch([item("M00000021", app, amount=999_999)]))
    assert other.status.tolist() == [Code.ALREADY_EXISTS]
    assert "already used" in other.message


def test_repeat_inside_one_batch(engine: ScoringEngine) -> None:
    app = f"idem-{uuid.uuid4().hex}"
    resp = engine.score(to_batch([item("M00000022", app), item("M00000023"), item("M00000022", app)]))
    ids = resp.decision_ids()
    assert ids[0] == ids[2] != ids[1]


def test_repeat_inside_one_batch_asking_something_else_is_refused(engine: ScoringEngine) -> None:
    app = f"idem-{uuid.uuid4().hex}"
    resp = engine.score(to_batch([item("M00000022", app, amount=100_000), item("M00000022", app, amount=200_000)]))
    assert resp.status.tolist() == [Code.OK, Code.ALREADY_EXISTS]


def test_idempotency_is_scoped_per_caller(engine: ScoringEngine) -> None:
    app = f"idem-{uuid.uuid4().hex}"
    a, b = bytearray(item("M00000024", app, amount=100_000)), bytearray(item("M00000024", app, amount=300_000))
    off = REQUEST_DTYPE.fields["caller"][1]
    a[off : off + 6], b[off : off + 6] = b"shop-a", b"shop-b"
    resp = engine.score(to_batch([bytes(a), bytes(b)]))
    assert resp.status.tolist() == [Code.OK, Code.OK]
    assert resp.decision_ids()[0] != resp.decision_ids()[1]


def test_two_replicas_share_decisions(world: World) -> None:
    a, b = build_engine(_settings(world)), build_engine(_settings(world))
    app = f"idem-{uuid.uuid4().hex}"
    first = a.score(to_batch([item("M00000024", app)]))
    second = b.score(to_batch([item("M00000024", app)]))
    assert first.decision_ids() == second.decision_ids()
    a.close()
    b.close()


def test_window_expiry_allows_a_new_decision(tmp_path: Path) -> None:
    now = [1_000_000.0]  # the store's clock, moved by the test (no sleeping)
    store = SqliteStore(tmp_path / "idem.db", window_s=0.2, clock=lambda: now[0])
    assert store.save(["x"], [b"one"]) == {}
    now[0] += 0.1
    assert store.save(["x"], [b"two"]) == {"x": b"one"}  # still live: the first wins
    now[0] += 0.2  # 0.3 s after the first save: past the window
    assert store.lookup(["x"]) == {}
    assert store.save(["x"], [b"three"]) == {}
    assert store.lookup(["x"]) == {"x": b"three"}


@requires_redis
def test_redis_store_first_writer_wins(world: World) -> None:
    settings = feature_settings(world).model_copy(update={"project": f"idemtest{uuid.uuid4().hex[:6]}"})
    store = RedisBackend(settings).idempotency(window_s=5)
    key = f"r-{uuid.uuid4().hex}"
    assert store.save([key], [b"one"]) == {}
    assert store.save([key], [b"two"]) == {key: b"one"}
    assert store.lookup([key, "absent"]) == {key: b"one"}
    store.put_reasons("p1", (("A", "a"),))
    assert store.reasons("p1") == (("A", "a"),)
    store.close()


def test_disabled_window_decides_afresh(world: World) -> None:
    e = build_engine(_settings(world, window=0))
    app = f"idem-{uuid.uuid4().hex}"
    one = e.score(to_batch([item("M00000025", app)]))
    two = e.score(to_batch([item("M00000025", app)]))
    assert one.decision_ids() != two.decision_ids()
    e.close()
