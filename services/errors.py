"""The service layer's exception hierarchy.

Lower layers raise their own errors (``features.errors``, ``kernels.errors``);
services wrap them at the boundary with ``raise ... from exc`` into these, and
``services.frontend.status`` maps each of these to exactly one gRPC status.
"""

from __future__ import annotations


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


class ShuttingDown(CreditAuthError):
    """The front end is draining and accepts no new work."""
