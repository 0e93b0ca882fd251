"""The embedded store: Feast's SQLite online store; idempotency, controls and exposure in WAL SQLite files beside it."""

from __future__ import annotations

from typing import Any

from features.exposure import ExposureState
from features.settings import FeatureSettings
from features.stores.base import ControlStore, OnlineReader, StoreKind, Writer
from features.stores.breaker import Breaker
from features.stores.idempotency import IdempotencyStore, NoIdempotency
from features.tags import TagCatalog
from features.velocity import VelocityRecorder


class SqliteBackend:
    kind: StoreKind = "sqlite"

    def __init__(self, settings: FeatureSettings) -> None:
        self.settings = settings

    def reader(self, tag_bytes: int | None = None) -> OnlineReader:
        from features.stores.sqlite import _sqlite
        from features.stores.sqlite.reader import PySqliteReader, SqliteReader

        if tag_bytes is None:
            tag_bytes = TagCatalog.load(self.settings).n_bytes
        if _sqlite.AVAILABLE:
            return SqliteReader(self.settings, tag_bytes)
        return PySqliteReader(self.settings, tag_bytes)

    def writer(self, *, dedup: bool = True) -> Writer:
        from features.stores.sqlite import _sqlite
        from features.stores.sqlite.writer import PySqliteWriter, SqliteWriter

        # SQLite upserts replace in place: ``dedup`` (a Redis read-before-write) has no meaning here.
        if _sqlite.AVAILABLE:
            return SqliteWriter(self.settings)
        return PySqliteWriter(self.settings)

    def velocity(self) -> VelocityRecorder:
        from features.stores.sqlite.velocity import SqliteVelocity

        return VelocityRecorder(SqliteVelocity(self.settings))

    def idempotency(self, window_s: float, namespace: str = "") -> IdempotencyStore:
        from features.stores.sqlite.idempotency import SqliteIdempotency

        if window_s <= 0:
            return NoIdempotency()
        path = self.settings.data_dir / "idempotency.db"
        breaker = Breaker.from_settings(f"SQLite {path}", self.settings)
        return SqliteIdempotency(path, window_s, namespace, timeout_s=self.settings.timeout_s, breaker=breaker)

    def controls(self) -> ControlStore:
        from features.stores.sqlite.controls import SqliteControls

        return SqliteControls(self.settings.data_dir / "controls.db", max(self.settings.timeout_s, 5.0))

    def exposure(self) -> ExposureState:
        from features.stores.sqlite.exposure import SqliteExposure

        path = self.settings.data_dir / "exposure.db"
        breaker = Breaker.from_settings(f"SQLite {path}", self.settings)
        return SqliteExposure(path, timeout_s=self.settings.timeout_s, breaker=breaker)

    def feast_online_store(self, *, reveal: bool = False) -> dict[str, Any]:
        return {"type": "sqlite", "path": str(self.settings.sqlite_path.resolve())}

    def server_cpu_s(self) -> float:
        return 0.0  # embedded: the store's work is this process's own CPU

    def server_memory_bytes(self) -> int:
        path = self.settings.sqlite_path
        return path.stat().st_size if path.exists() else 0

    def drop_project(self) -> None:
        self.settings.sqlite_path.unlink(missing_ok=True)
