"""A circuit breaker with exponential backoff: one per online store (per process).

Without one, a dead store costs every call its full timeout: a batch makes three or four
store calls (velocity, features, idempotency lookup and save), so each batch would wait
``timeout_s`` several times before it is answered degraded. With one:

- **closed**: calls go through; ``failures`` consecutive failures open the breaker.
- **open**: calls fail at once with ``BreakerOpen`` (an ``OnlineStoreUnavailable``, so
  every caller's degraded path applies unchanged), paying no timeout, until the
  current backoff interval has passed.
- **half-open**: the first call after the interval is the one probe; every other call
  still fails at once while it is in flight. The probe's success closes the breaker and
  resets the backoff; its failure reopens it for twice the interval, capped at
  ``max_backoff_s``.

So a dead store costs one probe (one timeout) per interval, and a store that comes back
is used again within one interval, without a restart. Only ``OnlineStoreUnavailable``
counts as a failure: a store that answered with something wrong (``FeatureDataError``)
or refused our credentials is reachable, and its errors are the caller's to report.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from features.errors import OnlineStoreUnavailable

if TYPE_CHECKING:
    from features.settings import FeatureSettings

log = logging.getLogger(__name__)
State = Literal["closed", "open", "half_open"]


class BreakerOpen(OnlineStoreUnavailable):
    """The store's breaker is open: the call was refused without trying the store."""


@dataclass(frozen=True)
class BreakerStats:
    state: State
    consecutive_failures: int
    opened: int  # times the breaker went from closed to open
    probes: int  # calls let through while open (each one a probe)
    rejected: int  # calls refused at once, without touching the store
    backoff_s: float  # the current interval between probes


class Breaker:
    """Thread-safe; ``clock`` is injectable so tests move time instead of sleeping."""

    def __init__(
        self,
        name: str,
        *,
        failures: int,
        backoff_s: float,
        max_backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError("breaker failures must be at least 1")
        if backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ValueError("breaker backoff_s must be > 0 and max_backoff_s >= backoff_s")
        self.name = name
        self._threshold = failures
        self._base = backoff_s
        self._max = max_backoff_s
        self._clock = clock
        self._on_open = on_open
        self._lock = threading.Lock()
        self._failures = 0
        self._open = False
        self._probing = False
        self._backoff = backoff_s
        self._retry_at = 0.0
        self._last_error = ""
        self._opened = self._probes = self._rejected = 0

    @classmethod
    def from_settings(
        cls, name: str, settings: FeatureSettings, *, on_open: Callable[[], None] | None = None
    ) -> Breaker:
        return cls(
            name,
            failures=settings.breaker_failures,
            backoff_s=settings.breaker_backoff_s,
            max_backoff_s=settings.breaker_max_backoff_s,
            on_open=on_open,
        )

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    @property
    def available(self) -> bool:
        """Whether calls go to the store now (closed): what readiness reports."""
        return self.state == "closed"

    def stats(self) -> BreakerStats:
        with self._lock:
            return BreakerStats(
                self._state(), self._failures, self._opened, self._probes, self._rejected, self._backoff
            )

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around one store call: refused at once while open, its outcome recorded after."""
        probe = self.admit()
        try:
            yield
        except OnlineStoreUnavailable as exc:
            self.failed(exc)
            raise
        except Exception:
            self.succeeded()  # the store answered (with something the caller refuses)
            raise
        except BaseException:
            self._release(probe)  # interrupted: no verdict on the store
            raise
        else:
            self.succeeded()

    def admit(self) -> bool:
        """Let a call through (True: it is the probe) or raise ``BreakerOpen``."""
        with self._lock:
            if not self._open:
                return False
            now = self._clock()
            if self._probing or now < self._retry_at:
                self._rejected += 1
                wait = max(self._retry_at - now, 0.0)
                raise BreakerOpen(
                    f"{self.name}: circuit open after {self._failures} consecutive failures "
                    f"(next probe in {wait:.2f} s; last error: {self._last_error})"
                )
            self._probing = True
            self._probes += 1
            return True

    def succeeded(self) -> None:
        with self._lock:
            was_open = self._open
            self._failures = 0
            self._open = self._probing = False
            self._backoff = self._base
        if was_open:
            log.warning("%s: store answered a probe, circuit closed", self.name)

    def failed(self, exc: BaseException | None = None) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = f"{exc}"[:300] if exc is not None else "unknown"
            opening = not self._open
            if self._probing:  # the probe failed: wait twice as long before the next one
                self._backoff = min(self._backoff * 2.0, self._max)
            elif self._open or self._failures < self._threshold:
                return  # a call admitted before the breaker opened, or not enough failures yet
            else:
                self._opened += 1
                log.warning("%s: %d consecutive failures, circuit open (probe every %.2f s or more): %s",
                            self.name, self._failures, self._backoff, self._last_error)
            self._open = True
            self._probing = False
            self._retry_at = self._clock() + self._backoff
        if opening and self._on_open is not None:
            # E.g. drop idle connections: sockets from before the outage would fail the first probes.
            self._on_open()

    def _release(self, probe: bool) -> None:
        if probe:
            with self._lock:
                self._probing = False

    def _state(self) -> State:
        if not self._open:
            return "closed"
        return "half_open" if self._probing or self._clock() >= self._retry_at else "open"
