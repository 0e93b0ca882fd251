"""What a store backend provides: the protocols every kind of online store implements.

A backend is everything the system keeps in one kind of online store: the batched
feature reader, the bulk writer, the velocity state, the idempotency records and the
operator controls and the exposure counters, and it is where the next pieces of shared
state belong (bundle pointers), so that adding a store kind is one new package under
``features.stores`` and adding a kind of state is one new method here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from features.batch import FeatureBatch
from features.controls import AuditEntry, Control, ControlSnapshot
from features.exposure import ExposureState
from features.stores.idempotency import IdempotencyStore
from features.velocity import VelocityRecorder

if TYPE_CHECKING:
    import polars as pl

    from features import catalog

StoreKind = Literal["sqlite", "redis"]


class OnlineReader(Protocol):
    def read(self, merchant_ids: Sequence[str]) -> FeatureBatch: ...

    def close(self) -> None: ...


class Writer(Protocol):
    """Bulk writes of Feast's online layout (the materializer's half of a backend)."""

    # True when one command per entity carrying all of its views is the fast path
    # (``write_entities`` on chunks aligned by merchant); False for per-view writes.
    aligned: bool

    def write(self, view: catalog.FeatureView, frame: pl.DataFrame, keys: list[bytes]) -> int: ...

    def write_entities(self, views: list[tuple[catalog.FeatureView, pl.DataFrame]], keys: list[bytes]) -> int:
        """Views' rows aligned to ``keys`` (a null ``event_timestamp`` means no row)."""
        ...

    def close(self) -> None: ...


class Watch(Protocol):
    """A running change subscription (a thread reading pub/sub messages); ``close`` ends it."""

    def close(self) -> None: ...


class ControlStore(Protocol):
    """Operator controls (``features.controls``): the active set under one version counter,
    an append-only audit, and a registry of reason entries whose slots never move.

    ``put`` and ``clear`` are atomic: the version, the set, the audit and the registry change
    together, and a change notification goes out with them where the store has one.
    """

    # How often a cache polls ``version``: the fallback where ``watch`` notifies, else the only way.
    poll_s: float

    def version(self) -> int:
        """The version counter (0: never set): one cheap round trip."""
        ...

    def snapshot(self) -> ControlSnapshot:
        """Every stored control (expired ones included) and the reason registry, at one version."""
        ...

    def put(self, control: Control) -> Control:
        """Store (add or replace by id) an author-stamped control; returns it with its version and reason slot."""
        ...

    def clear(self, control_id: str, author: str, justification: str, now: float) -> tuple[Control, int] | None:
        """Remove a control; returns it and the new version (None: no such control)."""
        ...

    def history(self, limit: int) -> list[AuditEntry]:
        """The last ``limit`` changes, oldest first."""
        ...

    def watch(self, notify: Callable[[], None]) -> Watch | None:
        """Call ``notify`` (from another thread) on every change; None: this store cannot notify."""
        ...

    def close(self) -> None: ...


class StoreBackend(Protocol):
    kind: StoreKind

    def reader(self, tag_bytes: int | None = None) -> OnlineReader:
        """A batched feature reader (``tag_bytes``: the tag bitset width; default from the catalogue)."""
        ...

    def writer(self, *, dedup: bool = True) -> Writer: ...

    def velocity(self) -> VelocityRecorder: ...

    def idempotency(self, window_s: float, namespace: str = "") -> IdempotencyStore:
        """Decision records kept ``window_s`` seconds; ``namespace`` names the record schema."""
        ...

    def controls(self) -> ControlStore:
        """Operator controls, shared by every replica and front end of the project."""
        ...

    def exposure(self) -> ExposureState:
        """Exposure-cap counters (``features.exposure``), shared by every replica and front end."""
        ...

    def feast_online_store(self, *, reveal: bool = False) -> dict[str, Any]:
        """The ``online_store`` section of Feast's ``feature_store.yaml`` for this store;
        secrets are placeholders unless ``reveal`` (for a config held in memory only)."""
        ...

    def server_cpu_s(self) -> float:
        """CPU seconds the store's server has used so far (0 for an embedded store), for benchmarks."""
        ...

    def server_memory_bytes(self) -> int:
        """Memory the store's data takes (Redis ``used_memory``; the SQLite file's size), for benchmarks."""
        ...

    def drop_project(self) -> None:
        """Delete everything this project keeps in the store (benchmarks and tests clean up with it)."""
        ...
