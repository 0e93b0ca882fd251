"""Throw-away certificate authorities, certificates and signed tokens for the security tests."""

from __future__ import annotations

import datetime as dt

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.auth.pki import Authority, Issued, now, pem_key

__all__ = ["Authority", "Issued", "TokenIssuer"]


class TokenIssuer:
    """An ES256 JWT issuer: its public key goes in ``security.jwt[].key_file``."""

    def __init__(self, issuer: str = "https://idp.test", audience: str = "creditauth") -> None:
        self.issuer, self.audience = issuer, audience
        self.key = ec.generate_private_key(ec.SECP256R1())

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, sub: str, *, ttl_s: float = 300, issuer: str | None = None, audience: str | None = None) -> str:
        t = now()
        claims = {
            "sub": sub, "iss": issuer or self.issuer, "aud": audience or self.audience,
            "iat": t, "exp": t + dt.timedelta(seconds=ttl_s),
        }
        return jwt.encode(claims, pem_key(self.key), algorithm="ES256")
