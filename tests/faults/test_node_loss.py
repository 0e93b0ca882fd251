"""A Ray node lost under load: two nodes in network namespaces, one replica each, batch calls
in flight; the worker node is killed (raylet, replica, all of it). Callers get answers or a
deliberate UNAVAILABLE, never a hang, and the surviving replica takes everything after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import World

ROOT = Path(__file__).resolve().parents[2]
IN_FLIGHT = 4  # the run's concurrent calls: at most these were at the worker when it died


def _netns_ok() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["ip", "netns", "add", "cal-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "cal-probe"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _netns_ok(), reason="needs root and `ip netns` to build the two-node cluster")
def test_losing_a_ray_node_under_load(world: World, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deploy.multinode.run", "--data-dir", str(world.data_dir), "--lose-worker",
         "--ns-prefix", "cal", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    report = json.loads(out.stdout)
    before, after = report["calls"]["before"], report["calls"]["after"]
    # The figures docs/reliability.md tabulates (shown with -s).
    print(f"\nnode loss: calls of 50 before {before}, after {after}; decisions per replica before "
          f"{report['replicas']['before']}, after {report['replicas']['after']}; probe (40 calls of 200) "
          f"before {report['probe_before']}, after {report['probe_after']}")
    assert before.get("OK", 0) == sum(before.values()), f"all answered before the loss: {before}"
    assert len(report["probe_before"]) == 2, "both nodes' replicas answered before the loss"
    errors = {k: v for k, v in after.items() if k != "OK"}
    # In flight at the dead node: resent once to the survivor (the router's retry), or answered
    # UNAVAILABLE; never a deadline, a hang or a crash.
    assert set(errors) <= {"UNAVAILABLE"} and sum(errors.values()) <= IN_FLIGHT, errors
    assert after.get("OK", 0) >= sum(after.values()) - IN_FLIGHT
    survivors = report["probe_after"]
    assert len(survivors) == 1 and sum(survivors.values()) == 40 * 200, survivors
