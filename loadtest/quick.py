"""``python -m loadtest quick``: a short closed-loop run of unary, batch and stream RPCs.

Prints one JSON document (summaries and sample decisions) on stdout; ``creditauth
demo`` runs it as a subprocess and parses that document, so its shape is fixed:
``target``, ``runs[{mode, rpcs, decisions, seconds, decisions_per_s, rpcs_per_s,
latency_ms{p50, p90, p99, p99.9, max}, errors, outcomes}]``, ``samples``.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from loadtest.closed_loop import run_batch, run_stream, run_unary
from loadtest.mix import RequestMix


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """Plaintext, or TLS checked against ``--tls-ca`` when given."""
    if args.tls_ca is None:
        return grpc.aio.insecure_channel(args.target)
    creds = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes())
    return grpc.aio.secure_channel(args.target, creds, options=[("grpc.ssl_target_name_override", args.tls_name)])


async def quick(args: argparse.Namespace) -> dict[str, object]:
    mix = RequestMix(args.data_dir)
    timeout = args.timeout
    async with _channel(args) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.CreditAuthorizationStub(channel)
        # Warm-up: JIT paths, connections, replica caches.
        await run_unary(stub, mix, requests=min(200, args.requests), concurrency=8, timeout_s=timeout)
        unary = await run_unary(
            stub, mix, requests=args.requests, concurrency=args.concurrency, timeout_s=timeout
        )
        batch = await run_batch(stub, mix, calls=args.batch_calls, size=100, concurrency=8, timeout_s=timeout)
        stream = await run_stream(
            stub, mix, requests=args.stream_requests, streams=2, window=256, timeout_s=max(timeout, 300.0)
        )
    return {
        "target": args.target,
        "runs": [unary.summary(), batch.summary(), stream.summary()],
        "samples": unary.samples[:6],
    }
