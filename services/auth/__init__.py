"""Callers: TLS on the listeners, who is calling, and what each caller may ask.

``Gate`` is the one object the front end asks, once per call: ``gate.caller(context,
rpc)`` names the caller's ``Grant`` or raises ``Unauthenticated``/``PermissionDenied``
(``services.errors``, mapped to gRPC codes at the boundary like every other error).
"""

from __future__ import annotations

from typing import Any

from services.auth.grants import Grant, Grants
from services.auth.identity import Identify
from services.auth.settings import ADMIN, CallerGrant, JwtIssuer, Listener, SecuritySettings, TlsSettings
from services.auth.tls import ReloadingCredentials, server_credentials

__all__ = [
    "ADMIN",
    "CallerGrant",
    "Gate",
    "Grant",
    "JwtIssuer",
    "Listener",
    "ReloadingCredentials",
    "SecuritySettings",
    "TlsSettings",
    "server_credentials",
]


class Gate:
    def __init__(self, security: SecuritySettings) -> None:
        self.grants = Grants(security)
        self._identify = Identify(security, self.grants)

    def caller(self, context: Any, rpc: str) -> Grant:
        """The grant of the caller of this RPC (``context``: a grpc.aio servicer context)."""
        grant = self._identify.caller(context.invocation_metadata(), context.auth_context)
        grant.allow_rpc(rpc)
        return grant

    def admin(self, context: Any) -> Grant:
        """The grant of the caller of an admin RPC (operator controls, bundles): it must hold
        the admin right; the scoring RPCs it may call do not matter."""
        grant = self._identify.caller(context.invocation_metadata(), context.auth_context)
        grant.require_admin()
        return grant
