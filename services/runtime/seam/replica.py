"""The Serve replica: builds the engine once, scores batches, registers its channel socket."""

from __future__ import annotations

import logging
import threading
import uuid
from importlib import metadata
from typing import Any

from services.runtime.channel import ChannelServer
from services.runtime.seam.registry import registry_actor
from services.scoring import DecisionBatch, RequestBatch
from services.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_S = 2.0  # well inside the registry's TTL, so a live replica never expires


def _build() -> str:
    try:
        return metadata.version("creditauth")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class _ScorerImpl:
    """The Serve replica: builds the engine once, then scores batches.

    Batches arrive on the direct channel (a socket this replica opens and
    registers) or, with ``serving.channel: handle``, as Serve handle calls.
    """

    def __init__(self, settings_json: str) -> None:
        from services.scoring.factory import build_engine

        settings = Settings.model_validate_json(settings_json)
        self._engine = build_engine(settings)
        self._build = _build()
        self._channel = ChannelServer(
            self._engine.score,
            info=self._info,
            host=settings.ray.channel_bind_host,
            ports=settings.ray.channel_ports,
            max_inflight=settings.ray.channel_max_inflight,
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
            "build": self._build,
            "endpoint": self._address,
        }

    def score(self, batch: RequestBatch) -> DecisionBatch:
        return self._engine.score(batch)

    def versions(self) -> tuple[str, str]:
        return self._engine.model_version, self._engine.policy_version

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


def _advertised(bound: str, advertise: str | None) -> str:
    """The address front ends dial: the bound one, or its port on the advertised host."""
    if advertise is None:
        return bound
    import ray

    host = ray.util.get_node_ip_address() if advertise == "node" else advertise  # type: ignore[no-untyped-call]
    return f"{host}:{bound.rsplit(':', 1)[1]}"
