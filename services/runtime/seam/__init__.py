"""Where the services meet Ray: the only code (besides the baselines that measure Ray) importing it.

    cluster   start or join the cluster; deploy, wait for, remove the Serve app; leave or stop
    app       the Serve application: ``application(settings)``, ``build_app(args)`` for KubeRay
    replica   the Serve replica (engine + channel server + registry heartbeat)
    registry  the detached actor where replicas register their channel sockets
    handle    ``RayServeBackend``: batches through a Serve handle

Ray itself is imported inside the functions, so importing the seam costs nothing
where no cluster is used (the local backend, unit tests).
"""

from services.runtime.seam.app import DEPLOYMENT, application, build_app
from services.runtime.seam.cluster import (
    cluster_address,
    deploy,
    disconnect,
    shutdown,
    start_cluster,
    undeploy,
    wait_ready,
)
from services.runtime.seam.handle import RayServeBackend
from services.runtime.seam.registry import endpoint_source

__all__ = [
    "DEPLOYMENT",
    "RayServeBackend",
    "application",
    "build_app",
    "cluster_address",
    "deploy",
    "disconnect",
    "endpoint_source",
    "shutdown",
    "start_cluster",
    "undeploy",
    "wait_ready",
]
