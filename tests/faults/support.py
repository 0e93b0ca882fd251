"""Helpers of the fault and degraded-mode tests: engines built from real parts, batches."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features import MATRIX_COLUMNS, TagCatalog
from features.settings import FeatureSettings
from features.stores.redis import RedisBackend
from services.decisionlog.settings import DecisionLogSettings
from services.decisionlog.writer import open_log
from services.models import load_artifact
from services.policy import Policy, PolicyConfig, load_policy
from services.schema.records import RECORD_SCHEMA, REQUEST_DTYPE, RequestBatch
from services.scoring import ScoringEngine
from tests.conftest import World
from tests.support import free_port

TIMEOUT_S = 0.2  # the store timeout the fault tests run with
MAX_AGE_S = 10 * 365 * 86400.0




@dataclass(frozen=True)
class RedisWorld:
    world: World
    data_dir: Path
    project: str
    redis_port: int

    def settings(self, port: int, **kw: object) -> FeatureSettings:
        """Feature settings reaching Redis on ``port`` (the proxy's), tight timeouts and breaker."""
        base: dict[str, object] = {
            "data_dir": self.data_dir, "online_store": "redis", "project": self.project,
            "redis_url": f"redis://127.0.0.1:{port}/0", "max_feature_age_s": MAX_AGE_S,
            "timeout_s": TIMEOUT_S, "breaker_failures": 3, "breaker_backoff_s": 0.2, "breaker_max_backoff_s": 0.8,
        }
        base.update(kw)
        return FeatureSettings(**base)


def policy_for(world: World, config: PolicyConfig | None = None) -> Policy:
    artifact = load_artifact(world.data_dir, world.model_version)
    catalog = TagCatalog.load(FeatureSettings(data_dir=world.data_dir))
    tags = {t.name: t.id for t in catalog}
    return Policy(config or load_policy(), artifact.feature_names, feature_columns=MATRIX_COLUMNS,
                  tag_index=tags, n_tags=len(tags))


def engine_through(
    rw: RedisWorld, port: int, policy: Policy | None = None, *, window_s: float = 900,
    settings: dict[str, object] | None = None, log_dir: Path | None = None,
) -> tuple[ScoringEngine, RedisBackend]:
    """The engine a replica builds (reader, velocity, idempotency on one Redis client) on
    ``port``, and its backend (whose client's breaker the tests read); with ``log_dir``, its
    decision log too (Parquet under ``<log_dir>/decisions``, key beside it: ``logcheck``)."""
    fs = rw.settings(port, **(settings or {}))
    backend = RedisBackend(fs)
    policy = policy or policy_for(rw.world)
    artifact = load_artifact(rw.world.data_dir, rw.world.model_version)
    n_tags = len(TagCatalog.load(fs))
    engine = ScoringEngine(
        backend.reader(8 * ((n_tags + 63) // 64)), artifact, policy, MAX_AGE_S,
        store=backend.idempotency(window_s, RECORD_SCHEMA), velocity=backend.velocity(),
        decision_log=open_log(DecisionLogSettings(), log_dir) if log_dir is not None else None,
    )
    return engine, backend


def batch(
    n: int, *, deadline_s: float = 2.0, product: int = 1, first: int = 0, merchants: Sequence[str] | None = None,
) -> RequestBatch:
    """``n`` requests for known merchants (or for ``merchants``, one each), each with its own
    fresh application id."""
    r = np.zeros(n, REQUEST_DTYPE)
    r["application_id"] = [f"f-{uuid.uuid4().hex}".encode() for _ in range(n)]
    ids = merchants if merchants is not None else [f"M{(first + i) % 3000:08d}" for i in range(n)]
    r["merchant_id"] = [m.encode() for m in ids]
    r["amount_minor"], r["currency"], r["term_months"], r["product"], r["channel"] = 500_000, 0, 12, product, 1
    r["declared_revenue_minor"] = float("nan")
    r["deadline"] = time.time() + deadline_s
    return RequestBatch(r)


def dead_redis(port: int | None = None, **kw: object) -> RedisBackend:
    """A Redis backend whose server is gone: every call is refused at once (a real failure)."""
    base: dict[str, object] = {
        "online_store": "redis", "redis_url": f"redis://127.0.0.1:{port or free_port()}/0", "timeout_s": TIMEOUT_S,
    }
    base.update(kw)
    return RedisBackend(FeatureSettings(**base))


def engine_of(world: World, policy: Policy, **parts: object) -> ScoringEngine:
    """An engine over the world's model with the given parts (reader, store, velocity)."""
    artifact = load_artifact(world.data_dir, world.model_version)
    reader = parts.pop("reader")
    return ScoringEngine(reader, artifact, policy, MAX_AGE_S, **parts)  # type: ignore[arg-type]
