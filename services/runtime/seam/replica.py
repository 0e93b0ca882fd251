"""The Serve replica: builds the engine once, scores batches, registers its channel socket.

Both ways in are checked the same: the channel server validates each batch it decodes,
and a Serve handle call goes through the same ``validate.screen`` before the engine.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from services import logs, version
from services.runtime.channel import ChannelServer
from services.runtime.channel.auth import resolve_secret
from services.runtime.seam.registry import registry_actor
from services.schema import validate
from services.scoring import DecisionBatch, RequestBatch
from services.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_S = 2.0  # well inside the registry's TTL, so a live replica never expires


class _ScorerImpl:
    """The Serve replica: builds the engine once, then scores batches.

    Batches arrive on the direct channel (a socket this replica opens and
    registers) or, with ``serving.channel: handle``, as Serve handle calls.
    """

    def __init__(self, settings_json: str) -> None:
        # The fixed engine, or (settings.bundle) one that follows its deployment and hot-swaps.
        from services.scoring.swap import serving_engine

        settings = Settings.model_validate_json(settings_json)
        logs.configure(logging.WARNING, settings.telemetry.log_format)  # the replica's own lines, as configured
        # The secret first: a replica that could not lock its channel must not start at all.
        secret = resolve_secret(settings.ray, "replica")
        self._engine = serving_engine(settings)
        self._build = version()
        self._channel = ChannelServer(
            self._engine.score,
            secret=secret,
            info=self._info,
            host=_bind_host(settings.ray.channel_bind_host),
            ports=settings.ray.channel_ports,
            max_inflight=settings.ray.channel_max_inflight,
            max_frame=settings.ray.channel_max_frame_bytes,
        )
        self._address = _advertised(self._channel.start(), settings.ray.channel_advertise_host)
        self._key = uuid.uuid4().hex
        self._registry = registry_actor(settings)
        self._stop = threading.Event()
        self._registry.register.remote(self._key, self._address)
        threading.Thread(target=self._heartbeat, name="registry-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._registry.register.remote(self._key, self._address)

    def _info(self) -> dict[str, Any]:
        """This replica's part of the channel's INFO answer."""
        return {
            "model_version": self._engine.model_version,
            "policy_version": self._engine.policy_version,
            "bundle": getattr(self._engine, "bundle_id", None),
            "build": self._build,
            "endpoint": self._address,
        }

    def score(self, batch: RequestBatch) -> DecisionBatch:
        """The Serve handle path: checked like a channel batch (bad rows INVALID_ARGUMENT)."""
        return validate.screen(batch, self._engine.score)

    def versions(self) -> tuple[str, str]:
        return self._engine.model_version, self._engine.policy_version

    def reload(self) -> str | None:
        """Look at the bundle registry now (a Serve handle call); the bundle served (None: none followed)."""
        reload = getattr(self._engine, "reload", None)
        if reload is not None:
            reload()
        return getattr(self._engine, "bundle_id", None)

    def endpoint(self) -> str:
        return self._address

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Queue depth for ``services.runtime.autoscale.QueueDepthPolicy``."""
        st = self._channel.stats
        return {"inflight_decisions": float(st.inflight_decisions), "rejected": float(st.rejected)}

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: leave the registry first.
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            try:
                self._registry.unregister.remote(self._key)
            except Exception as exc:  # the cluster may already be going away
                log.debug("unregister: %s", exc)
            self._channel.stop()
            # Flushes the decision log: a graceful stop loses no decision.
            self._engine.close()


_ANY = ("0.0.0.0", "::", "")  # every interface: an address to bind, never one to dial


def _node_ip() -> str:
    import ray

    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return ip


def _bind_host(host: str | None) -> str:
    """Where the channel listens: the configured host, else this node's own address only."""
    return _node_ip() if host is None else host


def _advertised(bound: str, advertise: str | None) -> str:
    """The address front ends dial: the bound one, or its port on the advertised host."""
    host, port = bound.rsplit(":", 1)
    if advertise is None and host not in _ANY:
        return bound
    # "node", or a socket on every interface that registers the one front ends can reach.
    target = _node_ip() if advertise in (None, "node") else advertise
    return f"{target}:{port}"
