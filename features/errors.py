"""The feature layer's exceptions. Services map them to gRPC status codes."""

from __future__ import annotations


class FeatureError(Exception):
    """Base of every error the feature layer raises."""


class FeatureConfigError(FeatureError, ValueError):
    """Settings or definitions that cannot work (bad path, unknown store, schema mismatch)."""


class FeatureDataError(FeatureError):
    """Data that breaks the layout contract: undecodable values, wrong types, missing tables."""


class OnlineStoreUnavailable(FeatureError):
    """The online store could not be reached or did not answer within the configured time."""
