"""A generator process (or thread, in tests): connect, report ready, wait for the start, run.

Messages to the parent are ``(kind, worker, payload)`` tuples on a queue:
``ready``, ``tick`` (interval slices, see ``Engine.flush``), ``failed`` (with
a reason) and ``done``. The parent answers ``ready`` with the campaign's start
time (wall clock, so every process agrees) and may later send ``stop``.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

import grpc

from loadtest.engine import Engine, WorkerPlan
from loadtest.mix import RequestMix

# Generous message limits: a batch of 10,000 requests is ~0.5 MB.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Queue(Protocol):
    def put(self, item: Any) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...


async def _serve(plan: WorkerPlan, out: Queue, ctl: Queue) -> None:
    c = plan.campaign
    w = plan.worker

    def emit(kind: str, payload: dict[str, Any]) -> None:
        out.put((kind, w, payload))

    mix = RequestMix(
        Path(c.data_dir),
        seed=c.seed * 7919 + w,
        unknown_share=c.mix.unknown_merchant_share,
        invalid_share=c.mix.invalid_share,
        zipf=c.mix.zipf,
        id_prefix=f"{plan.id_prefix}w{w}",
    )
    async with grpc.aio.insecure_channel(plan.target, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), c.connect_timeout)
        except asyncio.TimeoutError:
            emit("failed", {"reason": f"could not connect to {plan.target} within {c.connect_timeout:g} s"})
            return
        engine = Engine(plan, channel, mix, emit)
        emit("ready", {})
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, ctl.get)
        if first[0] != "start":
            return
        start_wall: float = first[1]

        def listen() -> None:
            # The rest of the control channel: only "stop" (or end of run).
            while True:
                msg = ctl.get()
                if msg[0] in ("stop", "exit"):
                    if msg[0] == "stop":
                        loop.call_soon_threadsafe(engine.request_stop)
                    return

        threading.Thread(target=listen, daemon=True).start()
        await engine.run(time.perf_counter() + (start_wall - time.time()))
    emit("done", {})


def run_worker(plan: WorkerPlan, out: Queue, ctl: Queue, *, fast_loop: bool = False) -> None:
    """Run one generator to completion; any failure is reported, never raised."""
    try:
        if fast_loop:
            try:
                import uvloop

                # uvloop roughly halves the generator's own per-request cost.
                uvloop.run(_serve(plan, out, ctl))
                return
            except ImportError:
                pass
        asyncio.run(_serve(plan, out, ctl))
    except Exception as exc:  # reported to the parent, which decides what to do
        out.put(("failed", plan.worker, {"reason": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}))


def process_main(plan: WorkerPlan, out: Queue, ctl: Queue) -> None:
    """Entry point of a spawned generator process."""
    # The parent owns Ctrl-C: it asks workers to stop and still writes a report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_worker(plan, out, ctl, fast_loop=True)
