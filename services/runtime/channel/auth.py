"""The direct channel's handshake: both ends prove they hold the shared secret before any frame.

    server -> client   HELLO  := magic (8) | server nonce (32)
    client -> server   PROOF  := client nonce (32) | HMAC(secret, label | "client" | sn | cn)
    server -> client   PROOF' := HMAC(secret, label | "server" | sn | cn)

Every message has a fixed size, so a peer can make a side read at most 64 bytes, and
the whole exchange is bounded by a timeout, so a silent peer costs one socket for that
long and no more. Fresh nonces from both sides make every proof single-use (a
recorded exchange replays to nothing); the role in each MAC keeps one side's proof
from being reflected back as the other's. Proofs are compared with
``hmac.compare_digest``. The connection is authenticated once; frames after it cost
what they cost before (the secret guards who may talk, TLS would guard what is said:
the channel runs inside the cluster network, see docs/security/channel.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from services.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from services.settings import RaySettings

log = logging.getLogger(__name__)

MAGIC = b"CAUTH\x00v1"
LABEL = b"creditauth/direct-channel/v1"
NONCE = 32
MAC = hashlib.sha256().digest_size
HELLO = len(MAGIC) + NONCE
PROOF = NONCE + MAC
MIN_SECRET = 16  # bytes: anything shorter is guessable, or a truncated file
MAX_SECRET = 4096  # a Secret holds a key, not a document: refuse to slurp a wrong mount
HANDSHAKE_TIMEOUT_S = 5.0


class HandshakeFailed(BackendUnavailable):
    """The peer did not prove it holds the channel secret (or said nothing in time)."""


def _mac(secret: bytes, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, LABEL + role + server_nonce + client_nonce, hashlib.sha256).digest()


async def _read(reader: asyncio.StreamReader, n: int, what: str) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise HandshakeFailed(f"peer closed the connection during the handshake ({what})") from exc


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> None:
    """The replica's side: challenge, check the client's proof, then prove itself."""
    server_nonce = secrets.token_bytes(NONCE)
    writer.write(MAGIC + server_nonce)
    await writer.drain()
    proof = await _read(reader, PROOF, "client proof")
    client_nonce, mac = proof[:NONCE], proof[NONCE:]
    if not hmac.compare_digest(mac, _mac(secret, b"client", server_nonce, client_nonce)):
        raise HandshakeFailed("client proof does not match the channel secret")
    writer.write(_mac(secret, b"server", server_nonce, client_nonce))
    await writer.drain()


async def prove(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> None:
    """The front end's side: answer the challenge, then check the replica's proof."""
    hello = await _read(reader, HELLO, "server hello")
    if not hmac.compare_digest(hello[: len(MAGIC)], MAGIC):
        raise HandshakeFailed("replica did not start the channel handshake (a plaintext replica?)")
    server_nonce = hello[len(MAGIC) :]
    client_nonce = secrets.token_bytes(NONCE)
    writer.write(client_nonce + _mac(secret, b"client", server_nonce, client_nonce))
    await writer.drain()
    mac = await _read(reader, MAC, "server proof")
    if not hmac.compare_digest(mac, _mac(secret, b"server", server_nonce, client_nonce)):
        raise HandshakeFailed("replica proof does not match the channel secret")


def resolve_secret(ray: RaySettings, who: str) -> bytes | None:
    """The channel secret the settings name; ``None`` where they choose plaintext.

    ``who`` ("replica", "front end") goes into the warning and the refusal, so a log says
    which side is misconfigured. Raises ``ConfigError`` when no secret is named and
    plaintext was not asked for (``services.stack`` names one for local clusters itself).
    """
    if ray.channel_secret_file is not None:
        return read_secret(ray.channel_secret_file)
    if ray.channel_plaintext:
        log.warning("%s: the direct channel runs in PLAINTEXT, unauthenticated "
                    "(ray.channel_plaintext: true); anyone who reaches its port can send batches", who)
        return None
    raise ConfigError(
        f"{who}: the direct channel needs a secret: set ray.channel_secret_file to a file of at least "
        f"{MIN_SECRET} random bytes (a mounted Kubernetes Secret), let `creditauth serve` start its own "
        "local cluster (it makes one), or set ray.channel_plaintext: true to run unauthenticated"
    )


def read_secret(path: Path) -> bytes:
    """The secret in ``path`` (a mounted Kubernetes Secret: raw bytes, trailing newline ignored)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET + 1)
    except OSError as exc:
        raise ConfigError(f"ray.channel_secret_file {path}: cannot read the channel secret: {exc}") from exc
    if len(raw) > MAX_SECRET:
        raise ConfigError(f"ray.channel_secret_file {path}: longer than {MAX_SECRET} bytes, not a key")
    secret = raw.rstrip(b"\r\n")  # `kubectl create secret --from-file` keeps an editor's newline
    if len(secret) < MIN_SECRET:
        raise ConfigError(
            f"ray.channel_secret_file {path}: {len(secret)} bytes, need at least {MIN_SECRET} "
            "(e.g. `head -c 32 /dev/urandom > file`)"
        )
    return secret


def write_secret(directory: Path) -> Path:
    """A fresh random secret in ``directory``, readable by its owner only."""
    path = directory / "channel.secret"
    # O_EXCL: never reuse (or follow a link to) a file someone placed there first.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path
