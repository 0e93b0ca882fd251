"""The cluster benchmark (``services.bench.cluster``) at tiny sizes: it starts and stops its own
servers (and stops them), every target answers the same (the bench checks it), and its figures describe the
routing they claim to: on 3 masters every master serves about a third of the merchants, one
command per merchant, no more (nothing redirected or retried), and velocity is one script
call per slot on a cluster but one per batch on a standalone server (commandstats count the
commands a script runs too)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.bench.cluster import _listening, main

BATCHES, BATCH = 5, 100


def test_bench_figures_describe_the_routing(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed")
    out = main(["--merchants", "200", "--rounds", "1", "--batches", str(BATCHES), "--batch", str(BATCH),
                "--json", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(out))
    rows = {(r["target"], r["layout"], r["workload"]): r for r in out["rows"]}
    merchants = BATCHES * BATCH
    read_cmd = {"standard": "hmget", "packed": "mget"}
    state_cmd = {"standard": "hget", "packed": "get"}  # velocity.lua's read of a merchant's window
    for layout, cmd in read_cmd.items():
        three = rows[("cluster, 3 masters", layout, "read")]
        assert three["merchants"] == merchants
        served = [c.get(cmd, 0) for c in three["calls"]]
        assert len(served) == 3 and sum(served) == merchants, served
        assert all(0.2 < s / merchants < 0.5 for s in served), served
        assert all(x > 0 for x in three["cpu_us"])
        for target in ("standalone", "cluster, 1 master"):
            assert rows[(target, layout, "read")]["calls"][0].get(cmd) == merchants
        # Velocity: every merchant's state read once inside the script, by one script call per
        # slot of a batch on a cluster (merchants sharing a slot share a call), one per batch alone.
        state = state_cmd[layout]
        velocity = rows[("cluster, 3 masters", layout, "velocity")]
        assert sum(c.get(state, 0) for c in velocity["calls"]) == merchants
        assert 0.9 * merchants <= sum(c.get("evalsha", 0) for c in velocity["calls"]) <= merchants
        alone = rows[("standalone", layout, "velocity")]["calls"][0]
        assert alone.get("evalsha") == BATCHES and alone.get(state) == merchants
    ratios = out["ratios"]
    assert (ratios["from"], ratios["to"]) == ("cluster, 1 master", "cluster, 3 masters")
    assert {f"{la} {w}" for la in read_cmd for w in ("read", "velocity")} <= set(ratios)
    ports = {p for r in out["rows"] for p in r["ports"]}
    assert len(ports) == 1 + 1 + 3
    assert not any(_listening(p) for p in ports)  # every server it started is stopped
