"""Two Ray nodes in network namespaces on this machine: both replicas take load over the network."""

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


def _netns_ok() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["ip", "netns", "add", "ca-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "ca-probe"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _netns_ok(), reason="needs root and `ip netns` to build the two-node cluster")
def test_two_nodes_across_namespaces_share_the_load(world: World, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deploy.multinode.run", "--data-dir", str(world.data_dir),
         "--requests", "600", "--batch-calls", "40", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    report = json.loads(out.stdout)
    per_replica = report["replica_nodes"]
    assert len(per_replica) == 2, per_replica  # one replica per node, both answering
    assert min(per_replica.values()) > 0
    assert all(not r["errors"] for r in report["runs"])
