"""Administrative operations on the Redis store (benchmarks and tests): server CPU and memory, cleanup.

They run over the backend's shared ``RedisClient`` with a longer deadline than a read
(``SCAN``/``UNLINK`` of a big project is many round trips, each of them larger). On a
Redis Cluster they run on every master: CPU and memory are the masters' sums, and the
cleanup scans each master and unlinks key by key (one command may not span slots).
"""

from __future__ import annotations

from features.errors import FeatureDataError
from features.stores.redis.client import RedisClient
from features.stores.redis.cluster import AnyClient, ClusterClient

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


def nodes(client: AnyClient) -> list[RedisClient]:
    """The servers holding the data: the client itself, or a cluster's masters."""
    return client.masters() if isinstance(client, ClusterClient) else [client]


def server_cpu_s(client: AnyClient) -> float:
    total = 0.0
    for node in nodes(client):
        cpu = info(node, "cpu")
        total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


def server_memory_bytes(client: AnyClient) -> int:
    return sum(int(info(node, "memory")["used_memory"]) for node in nodes(client))


def unlink_matching(client: AnyClient, pattern: bytes) -> int:
    """Unlink every key matching ``pattern`` (on every master of a cluster); returns how many."""
    dropped = 0
    for node in nodes(client):
        cursor = b"0"
        while True:
            reply = node.command(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", str(_BATCH).encode(),
                                 timeout_s=_timeout(node), context="SCAN")
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], list)):
                raise FeatureDataError(f"SCAN returned {reply!r:.200}")
            cursor, keys = reply
            if keys and node is client:
                node.command(b"UNLINK", *keys, timeout_s=_timeout(node), context="UNLINK")
            elif keys:
                for r in node.pipeline([[b"UNLINK", k] for k in keys], timeout_s=_timeout(node)):
                    node.check(r, "UNLINK")
            dropped += len(keys)
            if cursor == b"0":
                break
    return dropped


def drop_project(client: AnyClient, project: str) -> int:
    """Unlink the project's feature hashes (``<entity key><project>``) and its own keys
    (``<project>:*``, and ``{<project>:*`` hash-tagged on a cluster); returns how many keys went."""
    name = project.encode()
    patterns = [b"*" + name, name + b":*"] + ([b"{" + name + b":*"] if isinstance(client, ClusterClient) else [])
    return sum(unlink_matching(client, p) for p in patterns)
