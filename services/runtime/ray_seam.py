"""Every call into Ray lives here: cluster start/connect, the Serve app, the handle.

Keeping Ray behind this module means the engine, policy, batcher and servicer
are all testable without a cluster, and a change of Ray API touches one file.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from services.errors import BackendUnavailable
from services.scoring import RequestBatch, ResponseBatch
from services.settings import Settings

log = logging.getLogger(__name__)
DEPLOYMENT = "Scorer"


class _EndpointRegistry:
    """Detached actor: where each replica's direct-channel socket listens.

    Replicas register on start and re-register every few seconds; entries not
    refreshed for ``ttl_s`` are dropped, so a replica that died without saying
    so disappears on its own.
    """

    def __init__(self, ttl_s: float = 10.0) -> None:
        self._ttl = ttl_s
        self._entries: dict[str, tuple[str, float]] = {}

    def register(self, key: str, address: str) -> None:
        self._entries[key] = (address, time.time())

    def unregister(self, key: str) -> None:
        self._entries.pop(key, None)

    def endpoints(self) -> list[str]:
        now = time.time()
        self._entries = {k: v for k, v in self._entries.items() if now - v[1] < self._ttl}
        return sorted({a for a, _ in self._entries.values()})


def _registry(settings: Settings) -> Any:
    import ray

    actor: Any = ray.remote(num_cpus=0)(_EndpointRegistry)
    return actor.options(
        name=f"{settings.ray.app_name}-endpoints",
        namespace=settings.ray.namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote()


class _ScorerImpl:
    """The Serve replica: builds the engine once, then scores batches.

    Batches arrive on the direct channel (a socket this replica opens and
    registers) or, with ``serving.channel: handle``, as Serve handle calls.
    """

    def __init__(self, settings_json: str) -> None:
        import threading
        import uuid

        from services.runtime.channel import ChannelServer
        from services.scoring.factory import build_engine

        settings = Settings.model_validate_json(settings_json)
        self._engine = build_engine(settings)
        self._channel = ChannelServer(
            self._engine.score,
            host=settings.ray.channel_bind_host,
            ports=settings.ray.channel_ports,
            max_inflight=settings.ray.channel_max_inflight,
        )
        bound = self._channel.start()
        self._address = bound
        advertise = settings.ray.channel_advertise_host
        if advertise is not None:
            import ray

            host = ray.util.get_node_ip_address() if advertise == "node" else advertise  # type: ignore[no-untyped-call]
            self._address = f"{host}:{bound.rsplit(':', 1)[1]}"
        self._key = uuid.uuid4().hex
        self._registry = _registry(settings)
        self._stop = threading.Event()
        self._registry.register.remote(self._key, self._address)
        threading.Thread(target=self._heartbeat, name="registry-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(2.0):
            self._registry.register.remote(self._key, self._address)

    def score(self, batch: RequestBatch) -> ResponseBatch:
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


def start_cluster(settings: Settings) -> str:
    """Connect to ``settings.ray.address`` or start a local cluster (never on Redis' 6379).

    Returns "local" (this process started the cluster and owns it), "remote"
    (connected to someone else's cluster) or "existing" (already connected).
    """
    import ray

    if ray.is_initialized():
        return "existing"
    kwargs: dict[str, Any] = {
        "namespace": settings.ray.namespace,
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if settings.ray.address:
        ray.init(address=settings.ray.address, **kwargs)
        return "remote"
    # address="local" always starts a new head, even where a `ray start` cluster
    # left its address behind; it picks free ports itself (GCS port 0), while only
    # `ray start --head` defaults to 6379, which Redis holds here.
    ray.init(address="local", num_cpus=settings.ray.num_cpus, **kwargs)
    return "local"


def application(settings: Settings) -> Any:
    """The Serve application (scoring deployment bound to its settings)."""
    from ray import serve

    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": settings.ray.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.ray.replica_num_cpus},
    }
    auto = settings.ray.autoscaling
    if auto is None:
        options["num_replicas"] = settings.ray.replicas
    else:
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = {
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "initial_replicas": max(auto.min_replicas, 1),
            "upscale_delay_s": auto.upscale_delay_s,
            "downscale_delay_s": auto.downscale_delay_s,
            "metrics_interval_s": 1.0,
            "look_back_period_s": 5.0,
            "policy": {
                "policy_function": "services.runtime.autoscale:QueueDepthPolicy",
                "policy_kwargs": {"target_inflight_decisions": auto.target_inflight_decisions},
            },
        }
    scorer: Any = serve.deployment(_ScorerImpl, **options)
    return scorer.bind(settings.model_dump_json())


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder for ``serveConfigV2`` / ``serve run`` (KubeRay's entry).

    ``args`` is the settings document (the same keys as the settings YAML), so a
    RayService manifest configures replicas exactly like ``creditauth serve`` does.
    """
    from services.settings import load_settings

    return application(load_settings(None, args))


def deploy(settings: Settings) -> None:
    """Run (or update) the Serve application with the scoring deployment."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    serve.run(application(settings), name=settings.ray.app_name, route_prefix=None)


def undeploy(settings: Settings) -> None:
    """Delete the application, leaving Serve and the cluster running."""
    from ray import serve

    serve.delete(settings.ray.app_name)


def cluster_address() -> str:
    """The GCS address other processes on this host use to join this cluster."""
    import ray

    address: str = ray.get_runtime_context().gcs_address
    return address


def disconnect() -> None:
    """Leave a cluster this process joined, touching nothing running on it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def shutdown() -> None:
    """Stop Serve and the local cluster this process started."""
    import ray
    from ray import serve

    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    except Exception as exc:  # best effort on the way out
        log.warning("serve shutdown: %s", exc)
    if ray.is_initialized():
        ray.shutdown()


class RayServeBackend:
    """Sends each batch to the Scorer deployment through a Serve handle."""

    def __init__(self, settings: Settings) -> None:
        from ray import serve

        self._handle = serve.get_deployment_handle(DEPLOYMENT, app_name=settings.ray.app_name)
        self._method = self._handle.score

    async def score(self, batch: RequestBatch) -> ResponseBatch:
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException

        try:
            result: ResponseBatch = await self._method.remote(batch)
        except (RayError, RayServeException) as exc:
            raise BackendUnavailable(f"scoring replica failed: {exc}") from exc
        return result

    async def versions(self) -> tuple[str, str]:
        result: tuple[str, str] = await self._handle.versions.remote()
        return result

    async def close(self) -> None:
        return None

    def healthy(self) -> bool:
        return True


def direct_backend(settings: Settings) -> Any:
    """A ``DirectBackend`` following the replicas registered for this app."""
    from services.runtime.channel import DirectBackend

    registry = _registry(settings)

    async def endpoints() -> list[str]:
        result: list[str] = await registry.endpoints.remote()
        return result

    return DirectBackend(endpoints)


def backend(settings: Settings) -> Any:
    """The ``ScoringBackend`` the settings ask for (``serving.channel``)."""
    if settings.serving.channel == "handle":
        return RayServeBackend(settings)
    return direct_backend(settings)


def wait_ready(settings: Settings, timeout_s: float = 120.0) -> None:
    """Block until the app reports RUNNING."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(settings.ray.app_name)
        if app is not None and app.status == "RUNNING":
            return
        time.sleep(0.2)
    raise BackendUnavailable(f"Serve app {settings.ray.app_name} not running after {timeout_s}s")
