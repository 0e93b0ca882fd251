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


class _ScorerImpl:
    """The Serve replica: builds the engine once, then scores batches."""

    def __init__(self, settings_json: str) -> None:
        from services.scoring.factory import build_engine

        self._engine = build_engine(Settings.model_validate_json(settings_json))

    def score(self, batch: RequestBatch) -> ResponseBatch:
        return self._engine.score(batch)

    def versions(self) -> tuple[str, str]:
        return self._engine.model_version, self._engine.policy_version


def start_cluster(settings: Settings) -> bool:
    """Connect to ``settings.ray.address`` or start a local cluster (never on Redis' 6379).

    Returns False when this process was already connected (the caller does not own it).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "namespace": settings.ray.namespace,
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if settings.ray.address:
        ray.init(address=settings.ray.address, **kwargs)
    else:
        # A local head picks free ports itself (GCS port 0); only `ray start --head`
        # defaults to 6379, which Redis holds here.
        ray.init(num_cpus=settings.ray.num_cpus, **kwargs)
    return True


def application(settings: Settings) -> Any:
    """The Serve application (scoring deployment bound to its settings)."""
    from ray import serve

    scorer: Any = serve.deployment(
        _ScorerImpl,
        name=DEPLOYMENT,
        num_replicas=settings.ray.replicas,
        max_ongoing_requests=settings.ray.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.ray.replica_num_cpus},
    )
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


def shutdown() -> None:
    """Stop Serve and disconnect from (or stop, if local) the cluster."""
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
