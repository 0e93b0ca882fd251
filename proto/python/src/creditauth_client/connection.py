"""How a client reaches the front end: TLS (optionally mutual), a bearer token, deadlines.

Secure by default: with neither ``tls`` nor ``insecure=True`` the channel uses TLS checked
against the system's root certificates. ``insecure=True`` is for a front end on loopback;
a token is then sent only over gRPC's local credentials, which refuse any peer that is not
on this machine, so a bearer token never crosses a network in clear text.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from creditauth_client.retry import RetryPolicy

SERVICE = "creditauth.v1.CreditAuthorization"
# A token file larger than this is not a token; do not read it all.
_MAX_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Tls:
    """TLS settings. ``root_certificates`` None = the system's roots; a client certificate and
    key (PEM) make it mutual TLS; ``server_name`` overrides the name the server must carry."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("Tls: a client certificate needs its private key, and the key its certificate")

    @classmethod
    def from_files(
        cls, ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None, server_name: str | None = None,
    ) -> Tls:
        def read(p: str | os.PathLike[str] | None) -> bytes | None:
            return None if p is None else Path(p).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)


class BearerToken(grpc.AuthMetadataPlugin):
    """Sends ``authorization: Bearer <token>``; a token file is re-read when it changes, so a
    rotated token is picked up without a new channel."""

    def __init__(self, token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> None:
        if (token is None) == (token_file is None):
            raise ValueError("BearerToken needs exactly one of token and token_file")
        self._token = token.strip() if token is not None else None
        self._file = Path(token_file) if token_file is not None else None
        self._stamp: int | None = None
        if self._token is not None and not self._token:
            raise ValueError("BearerToken: the token is empty")
        self.current()  # fail now, at construction, on a missing or empty file

    def current(self) -> str:
        if self._file is None:
            assert self._token is not None
            return self._token
        stamp = self._file.stat().st_mtime_ns
        if stamp != self._stamp or self._token is None:
            with self._file.open("rb") as f:
                raw = f.read(_MAX_TOKEN_BYTES + 1)
            token = raw.decode("utf-8", "strict").strip() if len(raw) <= _MAX_TOKEN_BYTES else ""
            if not token:
                raise ValueError(f"{self._file}: no token (empty, or larger than {_MAX_TOKEN_BYTES} bytes)")
            self._token, self._stamp = token, stamp
        return self._token

    def __call__(self, context: Any, callback: Any) -> None:
        try:
            token = self.current()
        except (OSError, ValueError) as err:
            callback((), err)  # the call fails UNAVAILABLE naming the error, never sent without a token
            return
        callback((("authorization", f"Bearer {token}"),), None)


def service_config(retry: RetryPolicy | None) -> str:
    """The gRPC service config: transport retries for the stream only. Unary retries and all
    default deadlines belong to the interceptors (see :mod:`creditauth_client.retry`), so
    attempts never multiply."""
    stream: dict[str, Any] = {"name": [{"service": SERVICE, "method": "AuthorizeStream"}]}
    if retry is not None and retry.max_attempts > 1:
        stream["retryPolicy"] = {
            "maxAttempts": min(retry.max_attempts, 5),  # gRPC caps attempts at 5
            "initialBackoff": f"{retry.initial_backoff}s",
            "maxBackoff": f"{retry.max_backoff}s",
            "backoffMultiplier": retry.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"methodConfig": [stream]})


def _is_loopback(target: str) -> bool:
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Connection:
    """Everything but the channel class: the sync and the asyncio client share it."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]


def connection(
    target: str, *, insecure: bool, tls: Tls | None, token: str | None, token_file: str | os.PathLike[str] | None,
    retry: RetryPolicy | None, options: Sequence[tuple[str, Any]],
) -> Connection:
    if insecure and tls is not None:
        raise ValueError("choose one of insecure=True and tls=...")
    call_creds = None
    if token is not None or token_file is not None:
        call_creds = grpc.metadata_call_credentials(BearerToken(token, token_file), name="bearer")
    opts: list[tuple[str, Any]] = [("grpc.service_config", service_config(retry)), ("grpc.enable_retries", 1)]
    creds: grpc.ChannelCredentials | None
    if insecure:
        if call_creds is not None and not _is_loopback(target):
            raise ValueError(f"a token over an insecure channel is sent only to loopback, not to {target!r}; use tls=")
        creds = None
        if call_creds is not None:
            creds = grpc.composite_channel_credentials(
                grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP), call_creds
            )
    else:
        tls = tls or Tls()
        creds = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)
        if call_creds is not None:
            creds = grpc.composite_channel_credentials(creds, call_creds)
        if tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return Connection(target, creds, (*opts, *options))
