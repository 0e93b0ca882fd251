"""Administrative operations on the Redis store (benchmarks and tests): server CPU, cleanup."""

from __future__ import annotations

from typing import Any, cast

from features.settings import FeatureSettings


def _client(settings: FeatureSettings) -> Any:
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_timeout=max(settings.timeout_s, 10.0))


def server_cpu_s(settings: FeatureSettings) -> float:
    info = cast(dict[str, Any], _client(settings).info("cpu"))
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drop_project(settings: FeatureSettings) -> None:
    """Unlink the project's feature hashes (``<entity key><project>``) and its own keys (``<project>:*``)."""
    client = _client(settings)
    project = settings.project.encode()
    for pattern in (b"*" + project, project + b":*"):
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
