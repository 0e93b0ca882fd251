"""Server TLS whose certificate is re-read when its files change, without a restart.

gRPC asks ``fetch`` for a new configuration at each handshake; the files' modification
times are checked at most every ``reload_check_s``, so a renewed certificate (cert-manager
rewriting a mounted Secret) is served to new connections within that time, and open
connections keep the one they were made with.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from services.auth.settings import TlsSettings
from services.errors import ConfigError

log = logging.getLogger(__name__)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"security.tls.{what} {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"security.tls.{what} {path}: not a PEM file")
    return data


class ReloadingCredentials:
    def __init__(self, tls: TlsSettings) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = self._mtimes()
        self._next_check = time.monotonic() + tls.reload_check_s
        self.reloads = 0
        self._initial = self._config()

    def _files(self) -> list[Path]:
        files = [self._tls.cert_file, self._tls.key_file]
        return files + ([self._tls.client_ca_file] if self._tls.client_ca_file is not None else [])

    def _mtimes(self) -> tuple[int, ...]:
        try:
            return tuple(p.stat().st_mtime_ns for p in self._files())
        except OSError:
            return ()

    def _config(self) -> grpc.ServerCertificateConfiguration:
        key = _read(self._tls.key_file, "key_file")
        cert = _read(self._tls.cert_file, "cert_file")
        ca = _read(self._tls.client_ca_file, "client_ca_file") if self._tls.client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        # grpcio's stubs type the fetcher without None, which gRPC documents as "no change".
        fetch: Any = self.fetch
        return grpc.dynamic_ssl_server_credentials(
            self._initial, fetch, require_client_authentication=self._tls.client_ca_file is not None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each handshake: a new configuration when the files changed."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        with self._lock:
            self._next_check = now + self._tls.reload_check_s
            stamp = self._mtimes()
            if not stamp or stamp == self._stamp:
                return None
            try:
                config = self._config()
            except ConfigError as exc:  # a half-written renewal: keep serving the old one
                log.warning("TLS reload skipped: %s", exc)
                return None
            self._stamp = stamp
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self._tls.cert_file)
            return config


def server_credentials(tls: TlsSettings) -> tuple[grpc.ServerCredentials, ReloadingCredentials]:
    reloading = ReloadingCredentials(tls)
    return reloading.credentials(), reloading
