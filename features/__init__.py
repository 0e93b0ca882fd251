"""The feature layer: the catalogue, online stores (Feast's layout, read and written in
batches), request-time features, velocity, and, off the serving path, the synthetic
population, the Feast repository, bulk materialization and training frames.

The serving API is below; importing it pulls in neither polars nor the population
generator (``features.training``, ``features.materialize``, ``features.feast_repo`` and
``features.population`` are imported by name where they are needed).
"""

from features.batch import FeatureBatch
from features.cache import CachedReader
from features.catalog import FEATURE_SERVICE, MATRIX_COLUMNS, REQUEST_COLUMNS
from features.errors import (
    FeatureConfigError,
    FeatureDataError,
    FeatureError,
    OnlineStoreUnavailable,
)
from features.exposure import CapLimit, Claims, ExposureState, Grants
from features.request import request_features
from features.settings import FeatureSettings
from features.stores import IdempotencyStore, OnlineReader, StoreBackend, open_backend
from features.tags import Tag, TagCatalog
from features.velocity import VelocityCounts, VelocityRecorder

__all__ = [
    "FEATURE_SERVICE",
    "MATRIX_COLUMNS",
    "REQUEST_COLUMNS",
    "CachedReader",
    "CapLimit",
    "Claims",
    "ExposureState",
    "FeatureBatch",
    "FeatureConfigError",
    "FeatureDataError",
    "FeatureError",
    "FeatureSettings",
    "Grants",
    "IdempotencyStore",
    "OnlineReader",
    "OnlineStoreUnavailable",
    "StoreBackend",
    "Tag",
    "TagCatalog",
    "VelocityCounts",
    "VelocityRecorder",
    "open_backend",
    "request_features",
]
