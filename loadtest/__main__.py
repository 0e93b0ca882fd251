"""``python -m loadtest quick``: a short closed-loop run of unary, batch and stream RPCs.

Prints one JSON document (summaries and sample decisions) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import grpc

from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from loadtest.closed_loop import run_batch, run_stream, run_unary
from loadtest.mix import RequestMix


def _loopback_only(target: str) -> str:
    host = target.rsplit(":", 1)[0].strip("[]")
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise SystemExit(f"loadtest: refusing target {target!r}: only loopback targets are allowed here")
    return target


async def quick(args: argparse.Namespace) -> dict[str, object]:
    mix = RequestMix(args.data_dir)
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.CreditAuthorizationStub(channel)
        # Warm-up: JIT paths, connections, replica caches.
        await run_unary(stub, mix, requests=min(200, args.requests), concurrency=8, timeout_s=args.timeout)
        unary = await run_unary(stub, mix, requests=args.requests, concurrency=args.concurrency, timeout_s=args.timeout)
        batch = await run_batch(stub, mix, calls=args.batch_calls, size=100, concurrency=8, timeout_s=args.timeout)
        stream = await run_stream(stub, mix, requests=args.stream_requests, streams=2, window=256, timeout_s=max(args.timeout, 300.0))
    return {
        "target": args.target,
        "runs": [unary.summary(), batch.summary(), stream.summary()],
        "samples": unary.samples[:6],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quick", help="short closed-loop run; JSON on stdout")
    q.add_argument("--target", default="127.0.0.1:50051", type=_loopback_only)
    q.add_argument("--data-dir", type=Path, default=Path(".creditauth"))
    q.add_argument("--requests", type=int, default=4000)
    q.add_argument("--concurrency", type=int, default=64)
    q.add_argument("--batch-calls", type=int, default=200)
    q.add_argument("--stream-requests", type=int, default=10_000)
    q.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(quick(args))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
