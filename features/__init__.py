"""The feature layer: synthetic data, the Feast repository, bulk materialization and
batched online reads of Feast's online-store layout.

Public API; everything else in this package is private to it.
"""

from features.catalog import FEATURE_SERVICE, MATRIX_COLUMNS, REQUEST_COLUMNS
from features.errors import (
    FeatureConfigError,
    FeatureDataError,
    FeatureError,
    OnlineStoreUnavailable,
)
from features.online.batch import FeatureBatch
from features.online.cache import CachedReader
from features.online.reader import OnlineReader, open_reader
from features.request import request_features
from features.settings import FeatureSettings
from features.tags import Tag, TagCatalog
from features.training import MODEL_COLUMNS, training_frame
from features.velocity import VelocityCounts, VelocityRecorder

__all__ = [
    "FEATURE_SERVICE",
    "MATRIX_COLUMNS",
    "MODEL_COLUMNS",
    "REQUEST_COLUMNS",
    "CachedReader",
    "FeatureBatch",
    "FeatureConfigError",
    "FeatureDataError",
    "FeatureError",
    "FeatureSettings",
    "OnlineReader",
    "OnlineStoreUnavailable",
    "Tag",
    "TagCatalog",
    "VelocityCounts",
    "VelocityRecorder",
    "open_reader",
    "request_features",
    "training_frame",
]
