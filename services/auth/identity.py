"""Who is calling: a signed token in the metadata, else the client certificate, else anonymous.

A token (``authorization: Bearer <JWT>``) wins over the certificate because it names the
calling service even where a mesh or a shared gateway certificate carries the TLS. A
verified token is cached until it expires (bounded), so a caller that reuses its token
pays the signature check once, not per call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from services.auth.grants import Grant, Grants
from services.auth.settings import JwtIssuer, SecuritySettings
from services.errors import ConfigError, Unauthenticated

TOKEN_CACHE = 4096
MAX_TOKEN = 8192  # bytes: a longer header is refused before it is parsed


@dataclass(frozen=True)
class _Issuer:
    config: JwtIssuer
    key: Any


def _load_issuer(cfg: JwtIssuer) -> _Issuer:
    try:
        text = Path(cfg.key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"security.jwt[{cfg.issuer}].key_file {cfg.key_file}: {exc.strerror}") from None
    if cfg.algorithms == ("HS256",):
        return _Issuer(cfg, text.strip())
    if "HS256" in cfg.algorithms:
        raise ConfigError(f"security.jwt[{cfg.issuer}]: HS256 cannot be mixed with public-key algorithms")
    try:
        key = jwt.algorithms.get_default_algorithms()[cfg.algorithms[0]].prepare_key(text)
    except Exception as exc:  # PyJWT raises several types for an unreadable key
        raise ConfigError(f"security.jwt[{cfg.issuer}].key_file {cfg.key_file}: not a public key ({exc})") from None
    return _Issuer(cfg, key)


class Identify:
    """Maps a call's metadata and TLS peer to a ``Grant``, or raises ``Unauthenticated``."""

    def __init__(self, security: SecuritySettings, grants: Grants) -> None:
        self._grants = grants
        self._issuers = {i.issuer: _load_issuer(i) for i in security.jwt}
        self._cache: OrderedDict[str, tuple[Grant, float]] = OrderedDict()

    def caller(
        self, metadata: Iterable[tuple[str, Any]] | None, auth: Callable[[], Mapping[str, Iterable[bytes]]]
    ) -> Grant:
        """``auth``: the call's TLS peer properties, asked for only when no token names the caller."""
        token = _bearer(metadata)
        if token is not None:
            return self._from_token(token)
        names = _certificate_names(auth())
        if names:
            known = next((n for n in names if n in self._grants), None)
            # A trusted certificate whose names hold no grant: authenticated, not authorized.
            return self._grants.of(known if known is not None else names[0])
        if self._grants.anonymous is not None:
            return self._grants.anonymous
        raise Unauthenticated("no credentials: present a client certificate or an authorization: Bearer token")

    def _from_token(self, token: str) -> Grant:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        grant, expires = self._verify(token)
        self._cache[token] = (grant, expires)
        if len(self._cache) > TOKEN_CACHE:
            self._cache.popitem(last=False)
        return grant

    def _verify(self, token: str) -> tuple[Grant, float]:
        if not self._issuers:
            raise Unauthenticated("bearer tokens are not accepted here (no security.jwt issuers configured)")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"malformed bearer token: {exc}") from None
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            raise Unauthenticated(f"bearer token from an unknown issuer {str(unverified.get('iss'))[:64]!r}")
        cfg = issuer.config
        try:
            claims = jwt.decode(
                token, issuer.key, algorithms=list(cfg.algorithms), audience=cfg.audience, issuer=cfg.issuer,
                leeway=cfg.leeway_s, options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("bearer token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"bearer token refused: {exc}") from None
        return self._grants.of(str(claims["sub"])), float(claims["exp"]) + cfg.leeway_s


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if len(text) > MAX_TOKEN:
                raise Unauthenticated(f"authorization metadata longer than {MAX_TOKEN} bytes")
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    return None


def _certificate_names(auth: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The client certificate's common name, then its subject alternative names (gRPC has
    already checked the certificate against the configured CA)."""
    names = [v.decode("utf-8", "replace") for v in auth.get("x509_common_name", ())]
    names += [v.decode("utf-8", "replace") for v in auth.get("x509_subject_alternative_name", ())]
    return names
