"""Where logged batches go. A sink either takes a table durably or raises ``OSError``."""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa


class Sink(Protocol):
    def write(self, table: pa.Table) -> None:
        """Keep ``table`` (durable once this returns); ``OSError`` if it cannot."""

    def tick(self, now: float) -> None:
        """Periodic work (rolling files by age)."""

    def close(self) -> None:
        """Finish: everything written is in its final form."""
