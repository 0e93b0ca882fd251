"""Retries that honour the server's ``RetryInfo``, as client interceptors (sync and asyncio).

gRPC's own retry policy (the service config) cannot read ``google.rpc.RetryInfo``, so unary
calls are retried here instead: on ``UNAVAILABLE`` (after the server's delay, or an
exponential backoff when it gave none, e.g. no connection) and on ``RESOURCE_EXHAUSTED``
only when the server said when (without ``RetryInfo`` it is a size limit, which a retry
cannot cure). ``INVALID_ARGUMENT`` and every other code are returned at once. Attempts are
bounded by ``max_attempts`` and by the call's deadline, which covers all attempts: a delay
that would outlast it ends the call with the server's own error rather than a later
``DEADLINE_EXCEEDED``. Retrying is safe for the methods listed because each request
carries its idempotency key (``application_id``) or only reads.

The same interceptors give a call without a timeout its method's default deadline
(:class:`Timeouts`). The service config built from the policy retries only the stream
(whose messages an interceptor cannot replay), and only before it has started, so attempts
never multiply. It sets no timeouts: grpcio's service-config timeout fires about a second
early (grpc/grpc#34547, #40633; with grpcio 1.85.1 a 1 s one failed every call at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import grpc.aio

from creditauth_client.errors import retry_delay, status_from_metadata

AUTHORIZE = "/creditauth.v1.CreditAuthorization/Authorize"
AUTHORIZE_BATCH = "/creditauth.v1.CreditAuthorization/AuthorizeBatch"
LIST_CONTROLS = "/creditauth.v1.Controls/List"
# Controls.Set and Controls.Clear change state without an idempotency key: never retried.
IDEMPOTENT_METHODS = frozenset({AUTHORIZE, AUTHORIZE_BATCH, LIST_CONTROLS})
CONTROLS_PREFIX = "/creditauth.v1.Controls/"


@dataclass(frozen=True)
class Timeouts:
    """Default deadlines in seconds, each covering every retry of a call. ``stream`` None =
    none: a stream lives as long as its caller keeps it."""

    authorize: float = 5.0
    authorize_batch: float = 30.0
    controls: float = 10.0
    stream: float | None = None

    def __post_init__(self) -> None:
        for name in ("authorize", "authorize_batch", "controls", "stream"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Timeouts.{name} must be positive, got {value}")

    def for_method(self, method: str) -> float | None:
        if method == AUTHORIZE:
            return self.authorize
        if method == AUTHORIZE_BATCH:
            return self.authorize_batch
        return self.controls if method.startswith(CONTROLS_PREFIX) else None


@dataclass(frozen=True)
class RetryPolicy:
    """How unary calls are retried. ``max_attempts`` counts the first call (1 = no retry)."""

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0
    # A RetryInfo asking for longer than this is not waited for.
    max_server_delay: float = 30.0
    methods: frozenset[str] = IDEMPOTENT_METHODS

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 10:
            raise ValueError(f"RetryPolicy.max_attempts must be 1..10, got {self.max_attempts}")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("RetryPolicy needs 0 < initial_backoff <= max_backoff")
        if self.backoff_multiplier < 1 or self.max_server_delay < 0:
            raise ValueError("RetryPolicy needs backoff_multiplier >= 1 and max_server_delay >= 0")

    def delay(
        self, code: grpc.StatusCode, server_delay: float | None, attempt: int, remaining: float | None,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up now."""
        if attempt >= self.max_attempts:
            return None
        if server_delay is not None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            if server_delay > self.max_server_delay:
                return None
            # At least what the server asked; spread so shed callers do not return in step.
            wait = server_delay * rand(1.0, 1.2)
        elif code == grpc.StatusCode.UNAVAILABLE:
            cap = min(self.max_backoff, self.initial_backoff * self.backoff_multiplier ** (attempt - 1))
            wait = rand(cap / 2, cap)
        else:
            return None
        if remaining is not None and wait >= remaining:
            return None
        return wait


if TYPE_CHECKING:  # generic in grpc-stubs, not at run time
    _SyncInterceptor = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _AsyncInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _SyncInterceptor = grpc.UnaryUnaryClientInterceptor
    _AsyncInterceptor = grpc.aio.UnaryUnaryClientInterceptor

# Module-level defaults (both frozen), for use as argument defaults.
DEFAULT_RETRY = RetryPolicy()
DEFAULT_TIMEOUTS = Timeouts()


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _CallDetails(_Details, grpc.ClientCallDetails):
    """``grpc.ClientCallDetails`` with a per-attempt timeout."""


def _method(details: Any) -> str:
    # grpc.aio hands the method name over as bytes, the sync API as str.
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class _Base:
    def __init__(self, policy: RetryPolicy | None = None, timeouts: Timeouts | None = None) -> None:
        self.policy = policy or RetryPolicy(max_attempts=1)
        self.timeouts = timeouts or Timeouts()

    def _start(self, details: Any) -> tuple[float | None, int]:
        """The call's deadline (its own timeout or the method's default) and its last attempt."""
        method = _method(details)
        timeout = details.timeout if details.timeout is not None else self.timeouts.for_method(method)
        return _deadline(timeout), (self.policy.max_attempts if method in self.policy.methods else 1)

    def _wait(self, code: grpc.StatusCode, trailing: Any, attempt: int, last: int, deadline: float | None,
              ) -> float | None:
        if code == grpc.StatusCode.OK or attempt >= last:
            return None
        server = retry_delay(status_from_metadata(trailing))
        return self.policy.delay(code, server, attempt, _remaining(deadline))


class RetryInterceptor(_Base, _SyncInterceptor):
    """Sync interceptor: default deadlines and retries. A ``.future()`` call through it
    blocks while it retries."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        deadline, last = self._start(details)
        attempt = 1
        while True:
            attempt_details = _CallDetails(
                details.method, _remaining(deadline), details.metadata, details.credentials,
                getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
            )
            outcome = continuation(attempt_details, request)
            code = outcome.code()
            # trailing_metadata() is read only on failure: a success needs no decoding.
            trailing = outcome.trailing_metadata() if code != grpc.StatusCode.OK else None
            wait = self._wait(code, trailing, attempt, last, deadline)
            if wait is None:
                return outcome
            time.sleep(wait)  # the wait the server asked for: nothing else runs on this thread
            attempt += 1


class AsyncRetryInterceptor(_Base, _AsyncInterceptor):
    """The asyncio twin of :class:`RetryInterceptor`; waits without blocking the loop."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        deadline, last = self._start(details)
        attempt = 1
        while True:
            call = await continuation(details._replace(timeout=_remaining(deadline)), request)
            code = await call.code()
            trailing = await call.trailing_metadata() if code != grpc.StatusCode.OK else None
            wait = self._wait(code, trailing, attempt, last, deadline)
            if wait is None:
                return call
            await asyncio.sleep(wait)
            attempt += 1
