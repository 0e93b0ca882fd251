"""``creditauth demo``: the whole system end to end on the embedded defaults.

generate -> feast apply -> materialize (SQLite) -> train -> start a local Ray
cluster, the Serve replicas and the gRPC front end -> a separate load-generator
process sends real requests over gRPC -> print decisions, throughput and
latency -> drain and shut everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from typing import Any

from tqdm import tqdm

from services.auth import CallerGrant, SecuritySettings
from services.cli import commands
from services.settings import Settings


def _prepared(settings: Settings) -> bool:
    d = settings.data_dir
    return (d / "models" / "LATEST").exists() and settings.features.sqlite_path.exists()


def _prepare(settings: Settings, args: argparse.Namespace) -> None:
    steps = argparse.Namespace(merchants=args.merchants, seed=7, as_of=dt.datetime.now(dt.timezone.utc).date())
    print("== 1/4 generate the synthetic population", flush=True)
    commands.data_generate(settings, steps)
    print("== 2/4 apply the Feast feature repository", flush=True)
    commands.features_apply(settings, steps)
    print("== 3/4 materialize features into the online store", flush=True)
    commands.features_materialize(settings, argparse.Namespace(engine="bulk"))
    print("== 4/4 train the model (LightGBM -> Cython kernel, parity-gated)", flush=True)
    commands.model_train(settings, argparse.Namespace(rounds=400))


async def _load(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from services.stack import Stack

    serving = settings.serving.model_copy(update={"port": args.port})
    # The demo's callers are its own load generator on loopback: plaintext, said out loud.
    security = SecuritySettings(plaintext=True, anonymous=CallerGrant(name="anonymous"))
    settings = settings.model_copy(update={"serving": serving, "security": security})
    print(f"   PLAINTEXT: the demo listens on {serving.host} without TLS or caller authentication"
          " (security.plaintext: true); production front ends need security.tls", flush=True)
    print("== start: local Ray cluster, Serve scoring replica, gRPC front end", flush=True)
    t0 = time.perf_counter()
    async with Stack(settings) as stack:
        print(f"   stack up in {time.perf_counter() - t0:.1f} s, gRPC on 127.0.0.1:{stack.port}", flush=True)
        print(f"== load: {args.requests} unary + 200 batch RPCs of 100 + 10,000 requests on 2 streams", flush=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtest",
            "quick",
            "--target",
            f"127.0.0.1:{stack.port}",
            "--data-dir",
            str(settings.data_dir),
            "--requests",
            str(args.requests),
            "--concurrency",
            str(args.concurrency),
            stdout=asyncio.subprocess.PIPE,
        )
        with tqdm(desc="   load running", bar_format="{desc}: {elapsed}", disable=None) as bar:
            comm = asyncio.ensure_future(proc.communicate())
            while not comm.done():
                await asyncio.sleep(0.5)
                bar.update()
            out, _ = comm.result()
        if proc.returncode != 0:
            raise SystemExit(f"load generator failed with exit code {proc.returncode}")
        stats = stack.frontend.batcher.stats if stack.frontend else None
        result: dict[str, Any] = json.loads(out)
        if stats is not None and stats.calls:
            result["ray_calls"] = stats.calls
            result["mean_batch"] = stats.decisions / stats.calls
        print("== drain and shut down", flush=True)
    return result


def _print(result: dict[str, Any]) -> None:
    print("\nSample decisions:")
    for s in result["samples"]:
        reasons = ", ".join(r["code"] for r in s.get("reasons", [])[:3]) or "-"
        limit = s.get("approvedLimit", {})
        print(
            f"  {s.get('applicationId', ''):<16} {s.get('decision', '').replace('DECISION_', ''):<8} "
            f"grade {s.get('riskGrade', '-') or '-':<2} PD {s.get('probabilityOfDefault', 0):.3f} "
            f"limit {int(limit.get('amountMinor', 0)) / 100:>12,.2f} {limit.get('currency', '')} "
            f"APR {s.get('aprBps', 0) / 100:.2f}%  reasons: {reasons}"
        )
    print("\nThroughput and latency (load generator in a separate process, same 2-core host):")
    head = f"  {'mode':<9}{'decisions':>10}{'decisions/s':>13}"
    head += f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}  outcomes / errors"
    print(head)
    for r in result["runs"]:
        lat = r["latency_ms"]
        print(
            f"  {r['mode']:<9}{r['decisions']:>10,}{r['decisions_per_s']:>13,.0f}{lat['p50']:>9.2f}{lat['p90']:>9.2f}"
            f"{lat['p99']:>9.2f}{lat['p99.9']:>10.2f}  {r['outcomes']} {r['errors'] or ''}"
        )
    if "ray_calls" in result:
        print(f"  Ray calls: {result['ray_calls']:,}, mean {result['mean_batch']:.1f} decisions per call")


def run_demo(settings: Settings, args: argparse.Namespace) -> None:
    if not (args.reuse_data and _prepared(settings)):
        _prepare(settings, args)
    result = asyncio.run(_load(settings, args))
    _print(result)
    errors = sum(sum(r["errors"].values()) for r in result["runs"])
    print(f"\ndemo finished: {sum(r['decisions'] for r in result['runs']):,} decisions, {errors} errors")
