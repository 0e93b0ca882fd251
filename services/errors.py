"""The services' one exception root, and the one table from errors to status codes.

Lower layers raise their own roots (``features.FeatureError``, ``kernels.KernelError``);
where their work crosses into the services it is wrapped once, with ``translate``
(``raise translate(exc) from exc``), so code above sees only ``CreditAuthError``. Each
boundary then maps errors to a status with ``code_of`` (the front end to gRPC statuses,
a replica to the codes in its error frames) and, on the far side of a hop, back to an
error with ``error_for``.
"""

from __future__ import annotations

from features import FeatureConfigError, FeatureDataError, FeatureError, OnlineStoreUnavailable
from kernels import KernelError
from services.schema.codes import Code


class CreditAuthError(Exception):
    """Base of every error the services raise."""


class InvalidRequest(CreditAuthError, ValueError):
    """A request field is missing or malformed; ``field`` names it (proto path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigError(CreditAuthError, ValueError):
    """Settings, policy or artifact files that cannot be used; says which file and why."""


class ModelError(CreditAuthError):
    """No usable model: missing artifact, failed parity gate, feature mismatch."""


class Overloaded(CreditAuthError):
    """A bounded queue is full; the caller should back off and retry."""


class DeadlineExceeded(CreditAuthError):
    """The caller's deadline passed before the decision could be made."""


class BackendUnavailable(CreditAuthError):
    """No scoring replica could take the batch (replica died, cluster gone)."""


class StoreUnavailable(CreditAuthError):
    """An online store (features, velocity, idempotency) could not be reached in time."""


class DataError(CreditAuthError):
    """Stored data that breaks its contract (undecodable values, a mismatched record schema)."""


class ShuttingDown(CreditAuthError):
    """The front end is draining and accepts no new work."""


class InternalError(CreditAuthError):
    """A fault inside the services that no caller can fix (a bug, an inconsistent answer)."""


class Unauthenticated(CreditAuthError):
    """The caller did not prove who it is (no or an untrusted certificate, a bad token)."""


class PermissionDenied(CreditAuthError):
    """The caller is known but its grant does not cover what it asked (an RPC, a product,
    an amount, a right)."""


# First match wins: subclasses before their bases.
CODES: tuple[tuple[type[CreditAuthError], Code], ...] = (
    (InvalidRequest, Code.INVALID_ARGUMENT),
    (Unauthenticated, Code.UNAUTHENTICATED),
    (PermissionDenied, Code.PERMISSION_DENIED),
    (DeadlineExceeded, Code.DEADLINE_EXCEEDED),
    (Overloaded, Code.RESOURCE_EXHAUSTED),
    (ShuttingDown, Code.UNAVAILABLE),
    (BackendUnavailable, Code.UNAVAILABLE),
    (StoreUnavailable, Code.UNAVAILABLE),
    (ModelError, Code.FAILED_PRECONDITION),
    (ConfigError, Code.FAILED_PRECONDITION),
    (DataError, Code.INTERNAL),
    (InternalError, Code.INTERNAL),
    (CreditAuthError, Code.INTERNAL),
)
# The error a status code stands for on the far side of a hop (a replica's error frame).
_ERROR_FOR: dict[Code, type[CreditAuthError]] = {
    Code.INVALID_ARGUMENT: InvalidRequest,
    Code.UNAUTHENTICATED: Unauthenticated,
    Code.PERMISSION_DENIED: PermissionDenied,
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
    Code.RESOURCE_EXHAUSTED: Overloaded,
    Code.UNAVAILABLE: BackendUnavailable,
    Code.FAILED_PRECONDITION: ModelError,
    Code.INTERNAL: InternalError,
}


def code_of(exc: BaseException) -> Code:
    """The status an error is answered with; anything that is not ours is ``INTERNAL``."""
    for kind, code in CODES:
        if isinstance(exc, kind):
            return code
    return Code.INTERNAL


def error_for(code: int, message: str) -> CreditAuthError:
    """The error to raise for a status that came back over a hop (``InvalidRequest`` needs a field)."""
    try:
        kind = _ERROR_FOR.get(Code(code), InternalError)
    except ValueError:
        kind = InternalError
    if kind is InvalidRequest:
        return InvalidRequest("", message)
    return kind(message)


def translate(exc: FeatureError | KernelError) -> CreditAuthError:
    """A lower layer's error as the services' own (``raise translate(exc) from exc``)."""
    if isinstance(exc, OnlineStoreUnavailable):
        return StoreUnavailable(str(exc))
    if isinstance(exc, FeatureConfigError):
        return ConfigError(str(exc))
    if isinstance(exc, FeatureDataError):
        return DataError(str(exc))
    if isinstance(exc, KernelError):
        return ModelError(str(exc))
    return InternalError(str(exc))
