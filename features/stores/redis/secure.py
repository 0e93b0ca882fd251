"""Credentials and TLS for every Redis connection: resolved once, when a client is built.

``ConnectionConfig.from_settings`` reads the password file and builds the TLS context
once per client (``RedisBackend`` builds one and shares it with its pool and its writer),
not per connection: a rotated Secret takes effect on the next process start. The
settings name files only, so they validate on machines that do not hold the secret; a
missing or unreadable file is a ``FeatureConfigError`` naming the setting and the file,
raised here rather than at settings load.

Feast's own Redis client (materialization through the SDK) takes its connection from a
``RepoConfig`` that ``features.feast_repo.open_store`` builds in memory with the password;
the ``feature_store.yaml`` written to the data directory holds the placeholder
``password=${CREDITAUTH_REDIS_PASSWORD}`` instead (Feast expands ``${VAR}`` when its own CLI
loads the yaml), so neither a file nor this process's environment carries the password.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from features.errors import FeatureConfigError
from features.settings import FeatureSettings

# The environment variable Feast's yaml refers to for the password.
FEAST_PASSWORD_ENV = "CREDITAUTH_REDIS_PASSWORD"
# Feast splits its connection string on "," and "=", json-decodes each value, and the yaml
# is expanded as a whole: a value outside this set could change what Feast reads.
_FEAST_SAFE = re.compile(r"[A-Za-z0-9._~+/@%^*!?-]+")


@dataclass(frozen=True)
class ConnectionConfig:
    """Where a Redis server is and how a connection proves itself to it."""

    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    max_reply_bytes: int = 64 << 20

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}/{self.db}"

    @classmethod
    def from_settings(cls, settings: FeatureSettings) -> ConnectionConfig:
        host, port, db = settings.redis_host_port_db()
        u = urlparse(settings.redis_url)
        username = settings.redis_username or (unquote(u.username) if u.username else None)
        if settings.redis_password_file is not None:
            password: str | None = read_password(settings.redis_password_file)
        else:
            password = unquote(u.password) if u.password else None
        return cls(
            host, port, db, username, password,
            tls_context(settings) if u.scheme == "rediss" else None,
            settings.redis_max_reply_bytes,
        )

    def hello(self) -> list[list[bytes]]:
        """The commands that open a connection: AUTH (if any), SELECT (if not db 0)."""
        out: list[list[bytes]] = []
        if self.password is not None:
            out.append([b"AUTH", *([self.username.encode()] if self.username else []), self.password.encode()])
        if self.db:
            out.append([b"SELECT", str(self.db).encode()])
        return out


def read_password(path: Path) -> str:
    """The password in ``path`` without its trailing newline (``echo pw > file`` adds one)."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatureConfigError(f"redis_password_file {path} cannot be read: {exc}") from exc
    password = raw.rstrip("\r\n")
    if not password:
        raise FeatureConfigError(f"redis_password_file {path} is empty")
    return password


def tls_context(settings: FeatureSettings) -> ssl.SSLContext:
    """TLS 1.2+ that verifies the server's chain against ``redis_tls_ca_file`` (the system's
    CAs when unset) and its name against the URL's host, with a client certificate when set."""
    ca = settings.redis_tls_ca_file
    _readable("redis_tls_ca_file", ca)
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except ssl.SSLError as exc:
        raise FeatureConfigError(f"redis_tls_ca_file {ca} is not a PEM CA bundle: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    cert, key = settings.redis_tls_cert_file, settings.redis_tls_key_file
    if cert is not None:
        _readable("redis_tls_cert_file", cert)
        _readable("redis_tls_key_file", key)
        try:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        except (ssl.SSLError, ValueError) as exc:
            raise FeatureConfigError(
                f"redis_tls_cert_file {cert} / redis_tls_key_file {key}: not a certificate and its key: {exc}"
            ) from exc
    return ctx


def _readable(name: str, path: Path | None) -> None:
    if path is not None and not os.access(path, os.R_OK):
        raise FeatureConfigError(f"{name} {path} is missing or not readable")


# --- Feast's Redis client ---------------------------------------------------------------


def feast_online_store(settings: FeatureSettings, *, reveal: bool = False) -> dict[str, Any]:
    """The ``online_store`` section of ``feature_store.yaml`` (parsed by Feast's
    ``RedisOnlineStore._parse_connection_string`` into redis-py keyword arguments). The
    password is the ``${CREDITAUTH_REDIS_PASSWORD}`` placeholder (what the yaml on disk
    holds) unless ``reveal``: the config ``features.feast_repo.open_store`` keeps in memory."""
    config = ConnectionConfig.from_settings(settings)
    parts = [f"{config.host}:{config.port}", f"db={config.db}"]
    if config.username:
        parts.append(f"username={_feast_value('redis_username', config.username)}")
    if config.password is not None:
        _feast_value("the Redis password", config.password, secret=True)
        parts.append(f"password={config.password}" if reveal else f"password=${{{FEAST_PASSWORD_ENV}}}")
    if config.tls is not None:
        parts += ["ssl=true", "ssl_cert_reqs=required", "ssl_check_hostname=true"]
        for option, name, path in (
            ("ssl_ca_certs", "redis_tls_ca_file", settings.redis_tls_ca_file),
            ("ssl_certfile", "redis_tls_cert_file", settings.redis_tls_cert_file),
            ("ssl_keyfile", "redis_tls_key_file", settings.redis_tls_key_file),
        ):
            if path is not None:
                parts.append(f"{option}={_feast_value(name, str(Path(path).resolve()))}")
    section = {"type": "redis", "connection_string": ",".join(parts)}
    if settings.redis_cluster:  # redis-py's RedisCluster, started from the same node
        section["redis_type"] = "redis_cluster"
    return section


def _feast_value(name: str, value: str, *, secret: bool = False) -> str:
    """``value`` if Feast's connection string carries it unchanged, else a clear error."""
    shown = "it" if secret else repr(value)
    if not _FEAST_SAFE.fullmatch(value):
        raise FeatureConfigError(
            f"{name}: Feast's Redis connection string cannot carry {shown} (use only letters, digits "
            "and ._~+/@%^*!?-; e.g. `openssl rand -hex 32` for a password)"
        )
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    if not isinstance(decoded, str):  # Feast would pass 123 or true, not the string
        raise FeatureConfigError(f"{name}: Feast would read {shown} as JSON {type(decoded).__name__}")
    return value
