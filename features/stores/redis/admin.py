"""Administrative operations on the Redis store (benchmarks and tests): server CPU and memory, cleanup.

They run over the backend's shared ``RedisClient`` with a longer deadline than a read
(``SCAN``/``UNLINK`` of a big project is many round trips, each of them larger).
"""

from __future__ import annotations

from features.errors import FeatureDataError
from features.stores.redis.client import RedisClient

# Keys per SCAN step and per UNLINK.
_BATCH = 10_000
_ADMIN_TIMEOUT_S = 10.0


def _timeout(client: RedisClient) -> float:
    return max(client.timeout_s, _ADMIN_TIMEOUT_S)


def info(client: RedisClient, section: str) -> dict[str, str]:
    """``INFO <section>`` as a dict of strings."""
    raw = client.command(b"INFO", section.encode(), timeout_s=_timeout(client), context="INFO")
    if not isinstance(raw, bytes):
        raise FeatureDataError(f"INFO {section} returned {raw!r:.200}")
    out: dict[str, str] = {}
    for line in raw.decode("utf8", "replace").splitlines():
        if ":" in line and not line.startswith("#"):
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def server_cpu_s(client: RedisClient) -> float:
    cpu = info(client, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def server_memory_bytes(client: RedisClient) -> int:
    return int(info(client, "memory")["used_memory"])


def drop_project(client: RedisClient, project: str) -> int:
    """Unlink the project's feature hashes (``<entity key><project>``) and its own keys
    (``<project>:*``); returns how many keys went."""
    dropped = 0
    name = project.encode()
    for pattern in (b"*" + name, name + b":*"):
        cursor = b"0"
        while True:
            reply = client.command(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", str(_BATCH).encode(),
                                   timeout_s=_timeout(client), context="SCAN")
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], list)):
                raise FeatureDataError(f"SCAN returned {reply!r:.200}")
            cursor, keys = reply
            if keys:
                client.command(b"UNLINK", *keys, timeout_s=_timeout(client), context="UNLINK")
                dropped += len(keys)
            if cursor == b"0":
                break
    return dropped
