"""Settings of the decision log (``decision_log:`` in the service settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DecisionLogSettings(BaseModel):
    """Where and how every decision is written.

    Defaults: on, Parquet files under ``<features.data_dir>/decisions``, flushed at least
    every 0.5 s, a 256 MiB spool beside it, and new decisions refused (``UNAVAILABLE``)
    when the log can take nothing more. ``sink: nats`` publishes each flush to a JetStream
    stream instead (``sinks/nats.py``), compacted into the same Parquet layout under
    ``directory`` by ``creditauth log compact`` (``compactor.py``). Credentials are files
    (mounted Secrets), never values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Parquet layout root (None: <features.data_dir>/decisions).
    directory: Path | None = None
    # Seconds between flushes to the sink's journal: what a SIGKILL can lose.
    flush_interval_s: float = Field(0.5, gt=0, le=60)
    # A segment becomes a Parquet file at this size or age, or when the hour changes.
    roll_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    roll_interval_s: float = Field(300.0, gt=0)
    # Batches held in memory for the writer thread; beyond it the log is "full".
    max_pending_batches: int = Field(4096, ge=1)
    # fsync each journal chunk (survives a node crash, not only a process kill).
    fsync: bool = False
    # Local spool taking over while the sink fails (None: <directory>.spool), and its bound.
    spool_directory: Path | None = None
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=0)
    # When neither sink nor spool can take a batch: refuse new decisions, or count them.
    when_full: Literal["refuse", "count"] = "refuse"
    # Key of the identifiers' keyed hash: a file (a mounted Secret; only entry points read
    # the environment). None: a key generated once beside the data directory (dev only).
    id_key_file: Path | None = None
    # Keys the identifiers were hashed with before the current one (files, newest first):
    # rotation. New rows use id_key_file; `log show` searches under every key, so a
    # decision logged before a rotation is still found.
    id_previous_key_files: tuple[Path, ...] = ()
    # Names this replica's files (None: host-pid-random).
    replica_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")

    # Where each flush goes: Parquet files of this replica, or a NATS JetStream stream.
    sink: Literal["parquet", "nats"] = "parquet"
    # NATS servers, comma-separated (nats:// or tls://).
    nats_url: str = "nats://127.0.0.1:4222"
    # The stream (created if absent, with the settings below; an existing one is used as it is)
    # and its subjects: one per writer, <nats_subject>.<writer id>.
    nats_stream: str = Field("DECISIONS", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    nats_subject: str = Field("decisions", pattern=r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64})*$")
    # Credentials, as files: a user and a password file, or a .creds file (JWT and NKey seed).
    nats_user_file: Path | None = None
    nats_password_file: Path | None = None
    nats_creds_file: Path | None = None
    # TLS: the CA that signed the servers' certificates; a client certificate and key (mutual TLS).
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    # Bound of a publish's acknowledgement (per message) and of a write's wait for a
    # connection; past it the flush goes to the spool. With flush_interval_s it bounds what
    # a SIGKILL can lose (docs/decision-log.md: 0.5 + 0.5 s by default).
    nats_timeout_s: float = Field(0.5, gt=0, le=60)
    # The stream when it is created: file storage, always; replicas (3 in production, one per
    # node, to survive the loss of a pod); workqueue: a message is removed once compacted;
    # limits: kept until max age or max bytes. Full, the stream refuses publishes (discard
    # new): the spool takes over, nothing is dropped silently. 0 / -1: no limit.
    nats_replicas: int = Field(1, ge=1, le=5)
    nats_retention: Literal["workqueue", "limits"] = "workqueue"
    nats_max_bytes: int = Field(16 * 1024**3, ge=-1)
    nats_max_age_s: float = Field(7 * 86400.0, ge=0)
    # A publish retried within this window (its acknowledgement was lost) is stored once.
    nats_duplicate_window_s: float = Field(120.0, gt=0)
    # Arrow IPC buffer compression of each message (measured: docs/decision-log.md).
    nats_compression: Literal["none", "lz4", "zstd"] = "none"

    @model_validator(mode="after")
    def _roll(self) -> DecisionLogSettings:
        if self.roll_interval_s < self.flush_interval_s:
            raise ValueError("roll_interval_s must be at least flush_interval_s")
        if (self.nats_user_file is None) != (self.nats_password_file is None):
            raise ValueError("nats_user_file and nats_password_file go together")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("nats_tls_cert_file and nats_tls_key_file go together")
        return self

    def root(self, data_dir: Path) -> Path:
        return self.directory if self.directory is not None else data_dir / "decisions"

    def spool_root(self, data_dir: Path) -> Path:
        return self.spool_directory if self.spool_directory is not None else self.root(data_dir).with_name(
            self.root(data_dir).name + ".spool"
        )

    def key_path(self, data_dir: Path) -> Path:
        """The generated key's place: beside, not inside, the log (a copied log carries no key)."""
        return self.id_key_file if self.id_key_file is not None else data_dir / "decision_log.key"
