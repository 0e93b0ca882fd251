"""Build a ScoringEngine from settings (what a replica does once at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from features import (
    MATRIX_COLUMNS,
    CachedReader,
    FeatureError,
    IdempotencyStore,
    OnlineReader,
    TagCatalog,
    VelocityRecorder,
    open_backend,
)
from features.controls import ControlCache
from features.exposure import ExposureState
from services.decisionlog.writer import open_log
from services.errors import ConfigError, translate
from services.models import ModelArtifact, load_artifact
from services.policy import Policy, PolicyConfig, load_policy
from services.schema.records import RECORD_SCHEMA
from services.scoring.controls import Vocabulary
from services.scoring.engine import ScoringEngine
from services.scoring.variants import Arms
from services.settings import Settings
from services.telemetry import NullTelemetry, setup

if TYPE_CHECKING:
    from services.decisionlog.writer import DecisionLog


def catalog_of(settings: Settings) -> TagCatalog:
    """The tag catalogue written with the offline tables."""
    try:
        return TagCatalog.load(settings.features)
    except FeatureError as exc:
        raise ConfigError(str(exc)) from exc


def build_engine(settings: Settings, telemetry: NullTelemetry | None = None) -> ScoringEngine:
    """The engine a replica serves with; the feature layer's errors come out as the services' own.

    ``telemetry``: the replica's own (default: OTLP export when ``telemetry.otlp_endpoint`` is set).
    """
    try:
        return _build(settings, telemetry)
    except FeatureError as exc:
        raise translate(exc) from exc


def _build(settings: Settings, telemetry: NullTelemetry | None) -> ScoringEngine:
    artifact = load_artifact(settings.data_dir, settings.model_version)
    catalog = catalog_of(settings)
    policy = compile_policy(load_policy(settings.policy_path), artifact, catalog)
    return engine_with(open_shared(settings, catalog, telemetry), artifact, policy)


def compile_policy(config: PolicyConfig, artifact: ModelArtifact, catalog: TagCatalog) -> Policy:
    """A policy compiled for this model's inputs and the catalogue's tags."""
    tags = tag_index(catalog)
    return Policy(config, artifact.feature_names, feature_columns=MATRIX_COLUMNS, tag_index=tags, n_tags=len(tags))


def tag_index(catalog: TagCatalog) -> dict[str, int]:
    return {t.name: t.id for t in catalog}


@dataclass(frozen=True)
class Shared:
    """What a replica opens once. Every engine it builds (one per bundle it swaps in) uses
    these same stores, so an engine swapped out is dropped, never closed: closing it would
    close the stores the new one reads."""

    settings: Settings
    catalog: TagCatalog
    reader: OnlineReader
    store: IdempotencyStore
    velocity: VelocityRecorder | None
    controls: ControlCache
    telemetry: NullTelemetry | None
    exposure: ExposureState | None
    decision_log: DecisionLog | None


def open_shared(settings: Settings, catalog: TagCatalog, telemetry: NullTelemetry | None = None) -> Shared:
    """The stores, telemetry and decision log a replica's engines share."""
    tags = tag_index(catalog)
    stores = open_backend(settings.features)
    reader: OnlineReader = stores.reader(8 * ((len(tags) + 63) // 64))
    serving = settings.serving
    if serving.record_velocity and serving.feature_cache_ttl_s > 0:
        reader = CachedReader(reader, ttl_s=serving.feature_cache_ttl_s, max_entries=serving.feature_cache_entries)
    # Records are kept under their layout's name: a changed layout never reads an old one.
    store = stores.idempotency(settings.serving.idempotency_window_s, RECORD_SCHEMA)
    # Replicas export traces over OTLP only; their stage timings travel back with
    # each batch and are recorded by the front end's metrics (and Prometheus).
    replica_telemetry = settings.telemetry.model_copy(update={"prometheus_port": 0})
    if telemetry is None and replica_telemetry.otlp_endpoint:
        telemetry = setup(replica_telemetry, "creditauth-replica")
    velocity = stores.velocity() if settings.serving.record_velocity else None
    # Loaded before the first batch (a replica restarted mid-incident brakes at once), then
    # refreshed on the store's notifications and by polling its version.
    controls = ControlCache(stores.controls()).start()
    # Exposure reservations: one atomic store call per batch, shared by every engine swapped in.
    exposure = stores.exposure()
    return Shared(
        settings, catalog, reader, store, velocity, controls, telemetry, exposure,
        # Opened last: nothing above can fail and leave its writer thread behind.
        open_log(settings.decision_log, settings.data_dir),
    )


def engine_with(shared: Shared, artifact: ModelArtifact, policy: Policy, arms: Arms | None = None) -> ScoringEngine:
    """An engine deciding with ``artifact`` and ``policy`` (and ``arms``' challengers and
    shadows beside them) on the shared stores."""
    return ScoringEngine(
        shared.reader,
        artifact,
        policy,
        shared.settings.features.max_feature_age_s,
        store=shared.store,
        telemetry=shared.telemetry,
        velocity=shared.velocity,
        controls=shared.controls,
        vocabulary=Vocabulary.from_catalog(shared.catalog),
        decision_log=shared.decision_log,
        exposure=shared.exposure,
        arms=arms,
    )
