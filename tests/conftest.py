"""Shared fixtures: one small, real world (data, Feast repo, online store, model) per session."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

AS_OF = dt.date(2026, 11, 1)
SMALL_MERCHANTS = 3000


@dataclass(frozen=True)
class World:
    data_dir: Path
    as_of: dt.date
    model_version: str


def redis_available(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


requires_redis = pytest.mark.skipif(
    not redis_available(), reason="Redis is not reachable at 127.0.0.1:6379; Redis-path tests skipped"
)


def _window(as_of: dt.date) -> tuple[dt.datetime, dt.datetime]:
    ts = dt.datetime.combine(as_of, dt.time(), tzinfo=dt.timezone.utc)
    return ts - dt.timedelta(days=1), ts + dt.timedelta(seconds=1)


def build_world(root: Path, merchants: int = SMALL_MERCHANTS, *, train: bool = True) -> World:
    from features.feast_repo import apply
    from features.materialize import materialize
    from features.population import build_offline_tables, generate_population
    from features.settings import FeatureSettings
    from services.models.train import train_model

    generate_population(root, merchants=merchants, seed=7, as_of=AS_OF)
    build_offline_tables(root, AS_OF)
    settings = FeatureSettings(data_dir=root, max_feature_age_s=10 * 365 * 86400.0)
    apply(settings)
    materialize(settings, *_window(AS_OF))
    version = train_model(settings, rounds=60).version if train else ""
    return World(root, AS_OF, version)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """3,000 merchants, Feast applied, SQLite materialized, a model trained. Shared by the
    session: velocity counts and idempotency records accumulate as tests decide."""
    w = build_world(tmp_path_factory.mktemp("world"))
    import shutil

    shutil.copytree(w.data_dir, _pristine(w))  # the world as built, for ``clean_world``
    return w


def _pristine(w: World) -> Path:
    return w.data_dir.with_name(w.data_dir.name + "-pristine")


@pytest.fixture(scope="module")
def clean_world(world: World, tmp_path_factory: pytest.TempPathFactory) -> World:
    """A copy of the world as built, for one module: no velocity, idempotency, controls or
    log state from the tests that ran before (decision tables need exactly that)."""
    import shutil

    dest = tmp_path_factory.mktemp("clean") / "world"
    shutil.copytree(_pristine(world), dest)
    return World(dest, world.as_of, world.model_version)


@pytest.fixture(scope="session")
def redis_world(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The same world materialized into Redis under its own Feast project (cleaned up after)."""
    if not redis_available():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    import shutil

    import redis

    from features.feast_repo import apply
    from features.materialize import materialize
    from features.settings import FeatureSettings

    root = tmp_path_factory.mktemp("redis_world")
    for sub in ("raw", "offline", "models"):
        shutil.copytree(world.data_dir / sub, root / sub)
    project = f"catest{abs(hash(str(root))) % 10**8}"
    settings = FeatureSettings(
        data_dir=root, online_store="redis", project=project, max_feature_age_s=10 * 365 * 86400.0
    )
    apply(settings)
    materialize(settings, *_window(world.as_of))
    yield World(root, world.as_of, world.model_version)
    client = redis.Redis()
    for key in client.scan_iter(match=b"*" + project.encode()):
        client.delete(key)


def feature_settings(w: World, **kw: object):  # type: ignore[no-untyped-def]
    from features.settings import FeatureSettings

    base: dict[str, object] = {"data_dir": w.data_dir, "max_feature_age_s": 10 * 365 * 86400.0}
    if w.data_dir.name.startswith("redis_world"):
        import yaml

        cfg = yaml.safe_load((w.data_dir / "feature_repo" / "feature_store.yaml").read_text())
        base.update(online_store="redis", project=cfg["project"])
    base.update(kw)
    return FeatureSettings(**base)
