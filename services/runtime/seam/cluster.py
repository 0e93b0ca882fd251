"""The Ray cluster and the Serve app on it: start or join, deploy, wait, remove, leave."""

from __future__ import annotations

import logging
import time
from typing import Any

from services.errors import BackendUnavailable
from services.runtime.seam.app import application
from services.settings import Settings

log = logging.getLogger(__name__)


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
    ray.init(address="local", num_cpus=settings.ray.num_cpus,
             _system_config={"worker_niceness": settings.ray.worker_niceness}, **kwargs)
    return "local"


def cluster_address() -> str:
    """The GCS address other processes on this host use to join this cluster."""
    import ray

    address: str = ray.get_runtime_context().gcs_address
    return address


def deploy(settings: Settings) -> None:
    """Run (or update) the Serve application with the scoring deployment."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    serve.run(application(settings), name=settings.ray.app_name, route_prefix=None)


def undeploy(settings: Settings) -> None:
    """Delete the application, leaving Serve and the cluster running."""
    from ray import serve

    serve.delete(settings.ray.app_name)


def wait_ready(settings: Settings, timeout_s: float = 120.0) -> None:
    """Block until the app reports RUNNING (Serve offers no event to wait on: poll its status)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(settings.ray.app_name)
        if app is not None and app.status == "RUNNING":
            return
        time.sleep(0.2)
    raise BackendUnavailable(f"Serve app {settings.ray.app_name} not running after {timeout_s}s")


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
