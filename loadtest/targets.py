"""Which hosts a load test may hit.

Load is aimed at loopback unless a campaign file names a host explicitly: a
mistyped address must never turn a test into an attack on somebody's service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection


class TargetRefused(ValueError):
    pass


def split_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = target.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetRefused(f"target {target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_target(target: str, allowed_hosts: Collection[str] = ()) -> str:
    """``target`` unchanged if it may be load-tested, else ``TargetRefused`` saying why."""
    host, _ = split_target(target)
    if is_loopback(host) or host in allowed_hosts:
        return target
    raise TargetRefused(
        f"refusing target {target!r}: only loopback targets are allowed unless the campaign "
        f"file lists the host under allowed_hosts"
    )
