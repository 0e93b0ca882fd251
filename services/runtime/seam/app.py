"""The Serve application: the scoring deployment bound to its settings (and KubeRay's entry point)."""

from __future__ import annotations

from typing import Any

from services.runtime.seam.replica import _ScorerImpl
from services.settings import Settings, load_settings

DEPLOYMENT = "Scorer"
QUEUE_DEPTH_POLICY = "services.runtime.autoscale:QueueDepthPolicy"


def application(settings: Settings) -> Any:
    """The Serve application (scoring deployment bound to its settings)."""
    from ray import serve

    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": settings.ray.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.ray.replica_num_cpus},
        **_scaling(settings),
    }
    scorer: Any = serve.deployment(_ScorerImpl, **options)
    return scorer.bind(settings.model_dump_json())


def _scaling(settings: Settings) -> dict[str, Any]:
    auto = settings.ray.autoscaling
    if auto is None:
        return {"num_replicas": settings.ray.replicas}
    return {
        "num_replicas": "auto",
        "autoscaling_config": {
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "initial_replicas": max(auto.min_replicas, 1),
            "upscale_delay_s": auto.upscale_delay_s,
            "downscale_delay_s": auto.downscale_delay_s,
            "metrics_interval_s": 1.0,
            "look_back_period_s": 5.0,
            "policy": {
                "policy_function": QUEUE_DEPTH_POLICY,
                "policy_kwargs": {"target_inflight_decisions": auto.target_inflight_decisions},
            },
        },
    }


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder for ``serveConfigV2`` / ``serve run`` (KubeRay's entry).

    ``args`` is the settings document (the same keys as the settings YAML), so a
    RayService manifest configures replicas exactly like ``creditauth serve`` does.
    """
    return application(load_settings(None, args))
