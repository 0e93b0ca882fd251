"""Fixtures for the Redis Cluster tests: a 3-master, 3-replica cluster on loopback ports and a
single redis-server beside it, both started here and stopped after the module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.settings import FeatureSettings
from tests.conftest import AS_OF
from tests.features.redis_cluster import LocalCluster
from tests.support import throwaway_redis

MERCHANTS = 400


def cluster_settings(root: Path, url: str, project: str, layout_: str, *, cluster: bool) -> FeatureSettings:
    return FeatureSettings.model_validate({
        "data_dir": root, "online_store": "redis", "redis_url": url, "project": project,
        "redis_layout": layout_, "max_feature_age_s": 10 * 365 * 86400.0, "redis_cluster": cluster,
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw and offline tables of a small population (each world copies them)."""
    from features.population import build_offline_tables, generate_population

    root = tmp_path_factory.mktemp("cluster") / "data"
    generate_population(root, merchants=MERCHANTS, seed=11, as_of=AS_OF)
    build_offline_tables(root, AS_OF)
    return root


def _need_binaries() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed: Redis Cluster tests skipped")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three masters with a replica each, ``cluster_state:ok`` everywhere before it is handed out."""
    _need_binaries()
    c = LocalCluster.start(masters=3, replicas=1)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def single_url() -> Iterator[str]:
    """A throwaway standalone redis-server: the reference the cluster's answers are held to."""
    _need_binaries()
    with throwaway_redis() as port:
        yield f"redis://127.0.0.1:{port}/0"
