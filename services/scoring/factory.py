"""Build a ScoringEngine from settings (what a replica does once at start-up)."""

from __future__ import annotations

from features import (
    MATRIX_COLUMNS,
    CachedReader,
    FeatureError,
    OnlineReader,
    TagCatalog,
    open_backend,
)
from features.controls import ControlCache
from services.decisionlog.writer import open_log
from services.errors import ConfigError, translate
from services.models import load_artifact
from services.policy import Policy, load_policy
from services.schema.records import RECORD_SCHEMA
from services.scoring.controls import Vocabulary
from services.scoring.engine import ScoringEngine
from services.settings import Settings
from services.telemetry import NullTelemetry, setup


def _catalog(settings: Settings) -> TagCatalog:
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
    catalog = _catalog(settings)
    tags = {t.name: t.id for t in catalog}
    policy = Policy(
        load_policy(settings.policy_path),
        artifact.feature_names,
        feature_columns=MATRIX_COLUMNS,
        tag_index=tags,
        n_tags=len(tags),
    )
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
    return ScoringEngine(
        reader,
        artifact,
        policy,
        settings.features.max_feature_age_s,
        store=store,
        telemetry=telemetry,
        velocity=velocity,
        controls=controls,
        vocabulary=Vocabulary.from_catalog(catalog),
        # Opened last: nothing above can fail and leave its writer thread behind.
        decision_log=open_log(settings.decision_log, settings.data_dir),
    )
