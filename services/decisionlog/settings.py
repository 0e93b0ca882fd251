"""Settings of the decision log (``decision_log:`` in the service settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DecisionLogSettings(BaseModel):
    """Where and how every decision is written.

    Defaults: on, Parquet files under ``<features.data_dir>/decisions``, flushed at least
    every 0.5 s, a 256 MiB spool beside it, and new decisions refused (``UNAVAILABLE``)
    when the log can take nothing more.
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
    # Names this replica's files (None: host-pid-random).
    replica_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")

    @model_validator(mode="after")
    def _roll(self) -> DecisionLogSettings:
        if self.roll_interval_s < self.flush_interval_s:
            raise ValueError("roll_interval_s must be at least flush_interval_s")
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
