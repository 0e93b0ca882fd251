"""Which replica takes a call: power of two choices on decisions in flight, one retry, deadlines.

Of two live replicas drawn at random, the one with fewer decisions in flight gets the
call (ties to the first). A call whose replica is lost before answering is sent once
more to another replica: a lost replica has not answered, and scoring is idempotent
per application id, so the resend is safe. A replica that says it is busy is skipped
once. Every wait is bounded by the caller's deadline, so nothing hangs.
"""

from __future__ import annotations

import asyncio
import random
import time

from services.errors import BackendUnavailable, DeadlineExceeded, Overloaded
from services.runtime.channel.connection import Connection, ReplicaLost
from services.runtime.channel.frames import Op, Part
from services.runtime.channel.membership import Membership

ATTEMPTS = 2  # the first try and one more elsewhere


class Router:
    def __init__(self, membership: Membership, rng: random.Random | None = None) -> None:
        self._members = membership
        self._rng = rng or random.Random()
        self.retries = 0  # calls resent after losing their replica

    def pick(self, exclude: set[str]) -> Connection | None:
        live = [c for c in self._members.live() if c.address not in exclude]
        if len(live) <= 1:
            return live[0] if live else None
        a, b = self._rng.sample(live, 2)
        return a if a.inflight <= b.inflight else b

    async def call(self, op: Op, parts: list[Part], *, weight: int, deadline: float) -> bytes:
        """The RESULT payload of ``op`` from some replica, by ``deadline`` (Unix seconds).

        ``weight`` is the call's decisions, counted against its replica while in flight.
        Raises ``DeadlineExceeded``, ``Overloaded`` (every replica tried was busy),
        ``BackendUnavailable`` (none left to try), or the error a replica answered with.
        """
        tried: set[str] = set()
        last: Exception | None = None
        for attempt in range(ATTEMPTS):
            conn = self.pick(tried)
            if conn is None:
                break
            remaining = deadline - time.time()
            if remaining <= 0:
                raise DeadlineExceeded("batch deadline passed before a replica answered")
            conn.inflight += weight
            try:
                return await asyncio.wait_for(conn.call(op, parts), remaining)
            except asyncio.TimeoutError as exc:
                raise DeadlineExceeded(f"replica {conn.address} did not answer before the deadline") from exc
            except ReplicaLost as exc:
                self.retries += attempt == 0
                last = exc
            except Overloaded as exc:  # busy: try another replica, if there is one
                last = exc
            finally:
                conn.inflight -= weight
            tried.add(conn.address)
        if isinstance(last, Overloaded):
            raise last
        if last is None:
            known = self._members.known
            raise BackendUnavailable("no live scoring replica" if known else "no scoring replica is registered")
        raise BackendUnavailable(f"scoring replicas lost mid-batch: {last}") from last
