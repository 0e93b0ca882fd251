"""Ray Serve autoscaling on queue depth for replicas fed by the direct channel.

Batches reach replicas over the direct channel, so Serve's own request counts
do not see them. Each replica instead reports ``inflight_decisions`` (queued
plus being scored) through ``record_autoscaling_stats``; this policy sizes the
deployment so that each replica holds about ``target_inflight_decisions``.
"""

from __future__ import annotations

import math
from typing import Any


class QueueDepthPolicy:
    def __init__(self, target_inflight_decisions: float = 512.0) -> None:
        if target_inflight_decisions <= 0:
            raise ValueError("target_inflight_decisions must be positive")
        self.target = float(target_inflight_decisions)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        per_replica = metrics.get("inflight_decisions", {})
        current = max(int(ctx.current_num_replicas), 1)
        if not per_replica:
            return int(ctx.target_num_replicas), ctx.policy_state
        total = float(sum(per_replica.values()))
        desired = max(1, math.ceil(total / self.target))
        # Scale down one replica at a time; scale up as far as the queue asks.
        if desired < current:
            desired = current - 1
        lo = int(ctx.capacity_adjusted_min_replicas)
        hi = int(ctx.capacity_adjusted_max_replicas)
        return min(max(desired, lo), hi), ctx.policy_state
