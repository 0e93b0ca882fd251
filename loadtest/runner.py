"""Run a campaign against one target with several generator processes, merging as it goes.

The parent process does no load itself: it starts the generators (spawned,
never forked, since gRPC's threads do not survive a fork), gives them one
common start time, merges their once-a-second slices, prints progress, and
enforces the hard stop: whatever still runs past the campaign's end plus its
drain plus a grace period is terminated.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from loadtest.campaign import Campaign
from loadtest.engine import WorkerPlan
from loadtest.progress import Progress
from loadtest.results import TargetRun
from loadtest.worker import process_main, run_worker

# Time allowed for a generator to start (import, read the population) on top of
# the campaign's connect timeout.
STARTUP_S = 60.0
# After the hard stop, generators get this long to report before being terminated.
GRACE_S = 10.0
# A second is printed this long after it ends, so all generators have reported it.
PRINT_DELAY_S = 0.35


@dataclass
class _Workers:
    out: Any
    ctls: list[Any]
    handles: list[Any] = field(default_factory=list)
    inline: bool = False

    def alive(self, i: int) -> bool:
        h = self.handles[i]
        return bool(h.is_alive())

    def send_all(self, msg: tuple[Any, ...]) -> None:
        for c in self.ctls:
            c.put(msg)

    def shutdown(self) -> None:
        self.send_all(("exit",))
        for h in self.handles:
            h.join(timeout=5.0)
        if not self.inline:
            for h in self.handles:
                if h.is_alive():
                    h.terminate()  # our own child, stuck past its hard stop
                    h.join(timeout=5.0)


def _start(plans: list[WorkerPlan], inline: bool) -> _Workers:
    if inline:
        # Threads in this process: for tests, where spawning costs more than the run.
        out: Any = queue.Queue()
        ctls: list[Any] = [queue.Queue() for _ in plans]
        w = _Workers(out, ctls, inline=True)
        for p, c in zip(plans, ctls, strict=True):
            t = threading.Thread(target=run_worker, args=(p, out, c), daemon=True, name=f"loadtest-w{p.worker}")
            t.start()
            w.handles.append(t)
        return w
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ctls = [ctx.Queue() for _ in plans]
    w = _Workers(out, ctls)
    for p, c in zip(plans, ctls, strict=True):
        proc = ctx.Process(target=process_main, args=(p, out, c), daemon=True, name=f"loadtest-w{p.worker}")
        proc.start()
        w.handles.append(proc)
    return w


def run_target(
    campaign: Campaign,
    target: str,
    label: str,
    *,
    progress: Progress | None = None,
    inline: bool = False,
) -> TargetRun:
    """The whole campaign against ``target``; never raises for the target's failures."""
    progress = progress or Progress(enabled=False)
    run = TargetRun(label=label, target=target, campaign=campaign)
    n = campaign.processes
    prefix = f"lt{os.urandom(3).hex()}"
    plans = [WorkerPlan(campaign, target, i, n, prefix) for i in range(n)]
    workers = _start(plans, inline)
    try:
        if not _await_ready(run, workers, n):
            return run
        run.started_at = time.time() + 0.5
        workers.send_all(("start", run.started_at))
        progress.start(run, n)
        _collect(run, workers, n, progress)
    finally:
        workers.shutdown()
    return run


def _await_ready(run: TargetRun, workers: _Workers, n: int) -> bool:
    deadline = time.monotonic() + run.campaign.connect_timeout + STARTUP_S
    ready: set[int] = set()
    while len(ready) < n:
        try:
            kind, w, payload = workers.out.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() > deadline or any(not workers.alive(i) for i in range(n) if i not in ready):
                run.status, run.failure = "failed", "a generator did not start (see its output above)"
                return False
            continue
        if kind == "ready":
            ready.add(w)
        elif kind == "failed":
            run.status, run.failure = "failed", f"generator {w}: {payload['reason']}"
            return False
    return True


def _collect(run: TargetRun, workers: _Workers, n: int, progress: Progress) -> None:
    c = run.campaign
    hard_stop = run.started_at + c.duration + c.drain_s + GRACE_S
    done: set[int] = set()
    printed = 0
    interrupted_at: float | None = None
    while len(done) < n:
        try:
            _receive(run, workers, done)
            now = time.time()
            while now - run.started_at >= printed + 1 + PRINT_DELAY_S:
                progress.second(run, printed)
                printed += 1
            if _must_stop(run, workers, n, done, now=now, hard_stop=hard_stop, interrupted_at=interrupted_at):
                return
        except KeyboardInterrupt:
            if interrupted_at is not None:
                raise  # a second Ctrl-C: stop waiting
            interrupted_at = time.time()
            run.status, run.failure = "interrupted", "stopped by the user (Ctrl-C)"
            progress.say("  interrupted: stopping the generators (Ctrl-C again to abandon)")
            workers.send_all(("stop",))
    # Drain what arrived with the last "done" messages, then print the remaining seconds.
    _drain_ticks(run, workers)
    while printed <= max(run.seconds, default=-1):
        progress.second(run, printed)
        printed += 1
    if run.status == "pending":
        run.status = "complete"


def _receive(run: TargetRun, workers: _Workers, done: set[int]) -> None:
    """Handle at most one message from the generators, waiting up to 0.1 s for it."""
    try:
        kind, w, payload = workers.out.get(timeout=0.1)
    except queue.Empty:
        return
    if kind == "tick":
        run.absorb(w, payload)
    elif kind == "done":
        done.add(w)
    elif kind == "failed":
        done.add(w)
        run.status, run.failure = "failed", f"generator {w}: {payload['reason']}"


def _must_stop(
    run: TargetRun,
    workers: _Workers,
    n: int,
    done: set[int],
    *,
    now: float,
    hard_stop: float,
    interrupted_at: float | None,
) -> bool:
    """True (with the run marked failed if need be) when collection must end before every generator is done."""
    dead = [i for i in range(n) if i not in done and not workers.alive(i)]
    if dead and not workers.inline:
        run.status, run.failure = "failed", f"generator {dead[0]} exited unexpectedly"
        return True
    if now > hard_stop or (interrupted_at is not None and now > interrupted_at + GRACE_S):
        if run.status == "pending":
            run.status, run.failure = "failed", "generators did not stop by the hard stop"
        return True
    return False


def _drain_ticks(run: TargetRun, workers: _Workers) -> None:
    while True:
        try:
            kind, w, payload = workers.out.get_nowait()
        except queue.Empty:
            break
        if kind == "tick":
            run.absorb(w, payload)
