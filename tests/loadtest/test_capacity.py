"""Capacity arithmetic from measured per-core throughput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.capacity import measured_per_core, plan, plan_tier
from loadtest.cli import main


def test_tier_is_sized_for_target_at_planned_utilisation_plus_spares() -> None:
    t = plan_tier("frontend", 10_000.0, 410_000.0, utilisation=0.5, spare=1)
    # 410k / (10k * 0.5) = 82 units, plus one spare.
    assert (t.units, t.cores) == (83, 83)
    assert t.utilisation_at_target == pytest.approx(410_000 / (83 * 10_000), abs=1e-4)
    t4 = plan_tier("replica", 5_000.0, 410_000.0, utilisation=0.6, cores_per_unit=4, spare=2)
    # A 4-core replica serves 20k/s; at 60% that is 12k/s: ceil(410k / 12k) = 35 units, plus two spares.
    assert t4.units == 35 + 2 and t4.cores == 37 * 4
    with pytest.raises(ValueError, match="positive"):
        plan_tier("x", 0.0, 1.0, utilisation=0.5)


def test_plan_totals_and_nodes() -> None:
    p = plan({"frontend": 20_000.0, "replica": 50_000.0}, 410_000.0, utilisation=0.5, spare=1, cores_per_node=16)
    cores = {t["tier"]: t["cores"] for t in p["tiers"]}
    assert cores == {"frontend": 41 + 1, "replica": 17 + 1}
    assert p["total_cores"] == 60 and p["nodes"] == 4 + 1


def test_measured_per_core_uses_only_a_phase_that_met_its_gates(tmp_path: Path) -> None:
    summary: dict[str, Any] = {"runs": [{"label": "t", "phases": [{"name": "steady", "throughput": 3000.0}],
                         "gates": [{"phase": "steady", "passed": True}]}]}
    f = tmp_path / "summary.json"
    f.write_text(json.dumps(summary))
    assert measured_per_core(f, "steady", 2.0) == 1500.0
    summary["runs"][0]["gates"][0]["passed"] = False
    f.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="failed its gates"):
        measured_per_core(f, "steady", 2.0)


def test_capacity_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capacity", "--frontend-rps", "3000", "--replica-rps", "20000", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["target_decisions_per_s"] == 410_000
    assert {t["tier"] for t in p["tiers"]} == {"frontend", "replica"}
    assert main(["capacity"]) == 2
