"""Admission control at the servicer's entry: refuse what cannot be served in time, first.

Under overload the batcher's queue is not where the backlog is. A front end is bound by its
event loop, which accepts calls from gRPC one at a time, runs every handler and scores in
process; at twice its capacity, calls wait in gRPC (accepted by the transport, not yet
requested by the loop) and in the loop's ready queue, where no queue of ours sees them.
gRPC itself then cancels what exceeds its pending limits (``CANCELLED``, no reason given)
and the rest times out. Hence two lines. First, the backlog gRPC holds is bounded
(``Limits.max_pending``/``max_pending_hard``, below): what it cannot hold, gRPC refuses at no
cost to the loop. Second, what reaches the loop is decided on entry, before the call costs
anything (no identity, no decoding), from three signals, any of which refuses:

* **calls in flight**: calls admitted and not yet answered, at most ``max_calls``. By
  Little's law a bound on them is a bound on their latency (``max_calls`` over the drain
  rate), whatever the backlog upstream;
* **the loop's lag**: how late a timer of ours fires (a probe every ``probe_s``), the time
  every step of every call waits before it runs. Past ``max_lag_s`` the loop is behind and
  new work would only add to the wait of the work it has (a CoDel-like standing-queue signal:
  the lag has to *stay* over the target, two probes running, so a burst that the loop
  absorbs is admitted);
* **the caller's budget**: a call whose remaining deadline is below what it would wait
  (the loop's lag plus the batcher's expected queue wait) is refused at once with
  ``DEADLINE_EXCEEDED`` rather than worked on and answered late.

Refusals are ``Overloaded`` (``RESOURCE_EXHAUSTED``, with a ``RetryInfo`` from
``services.frontend.details``) or ``DeadlineExceeded``; the servicer spells them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from services.errors import ConfigError, CreditAuthError, DeadlineExceeded, Overloaded

# The refusal texts are constant, so their trailers are built once (services.frontend.details).
BUSY = "front end at capacity: too many calls in flight; retry with backoff"
BEHIND = "front end overloaded: its event loop is behind; retry with backoff"
NO_TIME = "not enough deadline left for the work queued ahead"


@dataclass(frozen=True)
class Limits:
    """The front end's overload limits (to become ``serving`` settings; see ``of``).

    ``max_pending``/``max_pending_hard``: calls gRPC holds that the loop has not taken yet
    (gRPC's ``grpc.server.max_pending_requests`` and ``..._hard_limit``: between the two it
    refuses a growing share at random, past the hard one all). gRPC's defaults, 1,000 and
    3,000, let 1-2 s of work wait unseen at this front end's rate; refusing there costs the
    loop nothing, refusing here about half of what serving costs (measured: 240-290 us of
    CPU per refusal against 500-740 us per decision), so at 2x capacity the excess cannot all
    reach the loop. The defaults bound the unseen wait to about 0.1-0.3 s.
    """

    max_pending: int = 128
    max_pending_hard: int = 512
    max_calls: int = 256
    max_lag_s: float = 0.1

    def __post_init__(self) -> None:
        if min(self.max_pending, self.max_pending_hard, self.max_calls) < 1 or self.max_lag_s <= 0:
            raise ConfigError(f"overload limits must be positive: {self}")
        if self.max_pending > self.max_pending_hard:
            raise ConfigError(f"max_pending ({self.max_pending}) exceeds max_pending_hard ({self.max_pending_hard})")

    @classmethod
    def of(cls, serving: object) -> Limits:
        """From ``serving`` settings where they have the fields (``max_pending_rpcs``,
        ``max_pending_rpcs_hard``, ``max_calls_in_flight``, ``max_loop_lag_ms``), else the defaults."""
        d = cls()
        return cls(
            max_pending=getattr(serving, "max_pending_rpcs", d.max_pending),
            max_pending_hard=getattr(serving, "max_pending_rpcs_hard", d.max_pending_hard),
            max_calls=getattr(serving, "max_calls_in_flight", d.max_calls),
            max_lag_s=getattr(serving, "max_loop_lag_ms", d.max_lag_s * 1000) / 1000,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        return [("grpc.server.max_pending_requests", self.max_pending),
                ("grpc.server.max_pending_requests_hard_limit", self.max_pending_hard)]


@dataclass
class AdmissionStats:
    admitted: int = 0
    busy: int = 0  # refused: calls in flight at the bound
    behind: int = 0  # refused: the loop's lag over the target
    no_time: int = 0  # refused: the deadline cannot cover the wait
    max_lag_s: float = 0.0


class Admission:
    """``queue_wait``: the batcher's expected wait for one more decision (seconds)."""

    def __init__(
        self, limits: Limits | None = None, *, probe_s: float = 0.01, queue_wait: Callable[[], float] | None = None,
    ) -> None:
        limits = limits or Limits()
        self._max_calls = limits.max_calls
        self._max_lag = limits.max_lag_s
        self._probe = probe_s
        self._queue_wait = queue_wait or (lambda: 0.0)
        self._calls = 0
        self._lag = 0.0  # the loop's lag at the last probe
        self._behind = False  # the lag stayed over the target for a whole probe
        self._task: asyncio.Task[None] | None = None
        self.stats = AdmissionStats()

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def lag_s(self) -> float:
        return self._lag

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="admission-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        """Probe the loop's lag: how much later than asked a timer of ours runs."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self._probe
            await asyncio.sleep(self._probe)  # a periodic probe: its lateness is the measurement
            lag = max(0.0, loop.time() - asked)
            # Behind only when this probe *and* the last were late: one slow step (a GC, a big
            # batch decoded) is absorbed, a standing queue is not.
            self._behind = lag > self._max_lag and self._lag > self._max_lag
            self._lag = lag
            self.stats.max_lag_s = max(self.stats.max_lag_s, lag)

    def refusal(self, remaining_s: float | None) -> CreditAuthError | None:
        """Why a new call must be refused now (None: admit it, then ``leave`` when answered)."""
        if self._calls >= self._max_calls:
            self.stats.busy += 1
            return Overloaded(BUSY)
        if self._behind:
            self.stats.behind += 1
            return Overloaded(BEHIND)
        if remaining_s is not None and remaining_s < self._lag + self._queue_wait():
            self.stats.no_time += 1
            return DeadlineExceeded(NO_TIME)
        self._calls += 1
        self.stats.admitted += 1
        return None

    def leave(self) -> None:
        self._calls -= 1

