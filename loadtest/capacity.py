"""Capacity arithmetic: how many cores and machines a target rate needs.

Inputs are *measured* per-core throughputs at SLO (from campaigns: a tier's
best passing throughput divided by the cores it used), never guesses. Each
tier is sized to run at ``utilisation`` of its measured capacity (headroom for
spikes, failover and noisy neighbours), plus ``spare`` whole units (N+k).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_TARGET = 410_000.0


@dataclass(frozen=True)
class TierPlan:
    tier: str
    per_core: float  # decisions/s one core sustains within SLO (measured)
    cores_per_unit: int  # cores one instance (process/replica) uses
    units: int  # instances needed, spares included
    cores: int
    utilisation_at_target: float  # fraction of measured capacity used at the target rate


def plan_tier(
    tier: str, per_core: float, target: float, *, utilisation: float, cores_per_unit: int = 1, spare: int = 1
) -> TierPlan:
    if per_core <= 0:
        raise ValueError(f"{tier}: per-core throughput must be positive, got {per_core}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
    per_unit = per_core * cores_per_unit
    needed = math.ceil(target / (per_unit * utilisation))
    units = needed + spare
    return TierPlan(
        tier=tier,
        per_core=per_core,
        cores_per_unit=cores_per_unit,
        units=units,
        cores=units * cores_per_unit,
        utilisation_at_target=round(target / (units * per_unit), 4),
    )


def measured_per_core(summary_path: Path, phase: str, cores: float, target_label: str | None = None) -> float:
    """Throughput of ``phase`` in a campaign's ``summary.json``, per core it ran on.

    Only a phase that met its gates counts: throughput bought by breaking the
    SLO is not capacity.
    """
    summary = json.loads(summary_path.read_text())
    runs = summary["runs"]
    run = next((r for r in runs if target_label in (None, r["label"])), None)
    if run is None:
        raise ValueError(f"{summary_path}: no run labelled {target_label!r}")
    ph = next((p for p in run["phases"] if p["name"] == phase), None)
    if ph is None:
        raise ValueError(f"{summary_path}: no phase {phase!r} (have {', '.join(p['name'] for p in run['phases'])})")
    failed = [g for g in run["gates"] if g["phase"] == phase and not g["passed"]]
    if failed:
        raise ValueError(f"{summary_path}: phase {phase!r} failed its gates; its throughput is not capacity")
    return float(ph["throughput"]) / cores


def plan(
    tiers: dict[str, float],
    target: float = DEFAULT_TARGET,
    *,
    utilisation: float = 0.6,
    spare: int = 1,
    cores_per_node: int = 32,
    cores_per_unit: dict[str, int] | None = None,
) -> dict[str, Any]:
    rows = [
        plan_tier(name, rps, target, utilisation=utilisation, spare=spare,
                  cores_per_unit=(cores_per_unit or {}).get(name, 1))
        for name, rps in tiers.items()
    ]
    cores = sum(r.cores for r in rows)
    return {
        "target_decisions_per_s": target,
        "utilisation": utilisation,
        "spare_units_per_tier": spare,
        "cores_per_node": cores_per_node,
        "tiers": [asdict(r) for r in rows],
        "total_cores": cores,
        # Packing tiers onto shared nodes; +1 node so losing one still leaves the cores.
        "nodes": math.ceil(cores / cores_per_node) + 1,
    }


def format_plan(p: dict[str, Any]) -> str:
    lines = [
        f"Capacity for {p['target_decisions_per_s']:,.0f} decisions/s at {p['utilisation']:.0%} of measured "
        f"capacity, +{p['spare_units_per_tier']} spare unit(s) per tier:",
        f"  {'tier':<14}{'per core/s':>12}{'cores/unit':>12}{'units':>8}{'cores':>8}{'load at target':>16}",
    ]
    for t in p["tiers"]:
        lines.append(
            f"  {t['tier']:<14}{t['per_core']:>12,.0f}{t['cores_per_unit']:>12}{t['units']:>8,}{t['cores']:>8,}"
            f"{t['utilisation_at_target']:>16.0%}"
        )
    lines.append(
        f"  total {p['total_cores']:,} cores -> {p['nodes']:,} nodes of {p['cores_per_node']} cores (one spare node)"
    )
    return "\n".join(lines)
