"""Who may call, and how they prove it: TLS, tokens and the authorization table.

Secure by default: a front end refuses to start without TLS unless ``plaintext: true``
says otherwise (the embedded demo and the tests say so). Key material and token keys are
read from files (Kubernetes Secrets mounted as files), never from the settings themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.schema.currency import CURRENCIES
from services.schema.enums import PRODUCTS

Rpc = Literal["Authorize", "AuthorizeBatch", "AuthorizeStream"]
RPCS: tuple[Rpc, ...] = ("Authorize", "AuthorizeBatch", "AuthorizeStream")
# The admin services (operator controls, bundles) answer only callers with the admin right.
ADMIN = "admin"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Strict):
    cert_file: Path  # PEM certificate chain of this listener
    key_file: Path  # PEM private key
    # Mutual TLS: client certificates must be signed by this CA (PEM); None: server TLS only.
    client_ca_file: Path | None = None
    # The files are re-read when they change, checked at most this often, without a restart.
    reload_check_s: float = Field(10.0, gt=0)


class JwtIssuer(_Strict):
    """Bearer tokens (``authorization: Bearer <JWT>`` metadata) signed by one issuer."""

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    # PEM public key (RS*/ES*/EdDSA), or the shared secret's file for HS256.
    key_file: Path
    algorithms: tuple[Literal["RS256", "RS384", "ES256", "ES384", "EdDSA", "HS256"], ...] = ("RS256", "ES256")
    # Clock skew tolerated on exp/nbf/iat.
    leeway_s: float = Field(30.0, ge=0, le=600)


class CallerGrant(_Strict):
    """What one caller may do. ``name`` is the caller's identity: the ``sub`` claim of its
    token, or the common name (or a DNS/URI name) of its client certificate."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@/\-]+$")
    rpcs: tuple[Rpc, ...] = RPCS
    # Product names as in the proto without the prefix ("WORKING_CAPITAL", ...); empty: all.
    products: tuple[str, ...] = ()
    # Largest requested amount per currency, in its minor units; a currency not listed is
    # refused once the map is non-empty; empty: no cap.
    max_amount_minor: dict[str, int] = Field(default_factory=dict)
    # Rights beyond scoring: "admin" for the controls and bundle services.
    rights: tuple[Literal["admin"], ...] = ()

    @model_validator(mode="after")
    def _known(self) -> CallerGrant:
        unknown = set(self.products) - set(PRODUCTS)
        if unknown:
            raise ValueError(f"caller {self.name!r}: unknown products {sorted(unknown)} (known: {list(PRODUCTS)})")
        codes = {c.code for c in CURRENCIES}
        bad = set(self.max_amount_minor) - codes
        if bad:
            raise ValueError(f"caller {self.name!r}: max_amount_minor names unbooked currencies {sorted(bad)}")
        if any(v < 1 for v in self.max_amount_minor.values()):
            raise ValueError(f"caller {self.name!r}: max_amount_minor values must be positive")
        return self


class Listener(_Strict):
    """One more port a front end listens on (the first is ``serving.host:port``): for example
    plaintext health on the pod's address for the kubelet, while callers use mutual TLS."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    plaintext: bool = False
    tls: TlsSettings | None = None
    authorization: bool = False  # serve the CreditAuthorization service here
    health: bool = True
    reflection: bool = False

    @model_validator(mode="after")
    def _secured(self) -> Listener:
        if self.tls is None and not self.plaintext:
            raise ValueError(f"listener {self.host}:{self.port}: needs tls or plaintext: true")
        return self


class SecuritySettings(_Strict):
    # Listen without TLS. Only where explicitly enabled (the embedded demo, tests, a mesh
    # that terminates TLS for us); a front end prints a warning when it starts so.
    plaintext: bool = False
    tls: TlsSettings | None = None
    jwt: tuple[JwtIssuer, ...] = ()
    callers: tuple[CallerGrant, ...] = ()
    # Who a caller is when nothing identifies it (no client certificate, no token). None:
    # unidentified callers are refused with UNAUTHENTICATED.
    anonymous: CallerGrant | None = None
    # On the main listener.
    reflection: bool = True
    health: bool = True
    listeners: tuple[Listener, ...] = ()

    def refusal(self) -> str | None:
        """Why a front end must not start with these settings (checked when it starts, so
        commands that serve nothing need no security settings at all)."""
        if self.tls is None and not self.plaintext:
            return "no TLS configured: set security.tls (cert_file, key_file) or security.plaintext: true"
        return None

    @model_validator(mode="after")
    def _consistent(self) -> SecuritySettings:
        names = [c.name for c in self.callers]
        if len(names) != len(set(names)):
            raise ValueError("security.callers: names must be unique")
        if self.anonymous is not None and self.anonymous.rights:
            raise ValueError("security.anonymous: an unidentified caller cannot hold rights")
        return self
