"""What a batch needs from the online store: velocity counts and features, in one stage.

If the store cannot be read the batch is still decided, conservatively: the features are
missing (every row unknown) and the batch is flagged degraded, so the policy refers it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from features import MATRIX_COLUMNS, FeatureBatch, FeatureError, OnlineReader, VelocityCounts, VelocityRecorder

log = logging.getLogger(__name__)
_APPS_1H = MATRIX_COLUMNS.index("apps_1h")
_APPS_24H = MATRIX_COLUMNS.index("apps_24h")


@dataclass(frozen=True)
class Gathered:
    features: FeatureBatch
    degraded: bool  # the features could not be read: decide without them


class FeatureStage:
    def __init__(self, reader: OnlineReader, velocity: VelocityRecorder | None) -> None:
        self._reader = reader
        self._velocity = velocity

    def gather(self, merchants: list[str], now: float) -> Gathered:
        counts = self._record(merchants, now)
        try:
            feats = self._reader.read(merchants)
        except FeatureError as exc:
            # The online store is down or slow: decide conservatively rather than fail.
            log.warning("online store unavailable, deciding in degraded mode: %s", exc)
            return Gathered(_missing(len(merchants)), degraded=True)
        if counts is not None:
            feats.matrix[:, _APPS_1H] = counts.apps_1h
            feats.matrix[:, _APPS_24H] = counts.apps_24h
        return Gathered(feats, degraded=False)

    def _record(self, merchants: list[str], now: float) -> VelocityCounts | None:
        """Count this batch's applications (one round trip); the counts that come back include
        them, so the velocity rule fires on the n-th application in the window, across every
        replica, whatever the reader cached."""
        if self._velocity is None:
            return None
        try:
            return self._velocity.record(merchants, now)
        except FeatureError as exc:
            log.warning("velocity update failed: %s", exc)
            return None

    def close(self) -> None:
        self._reader.close()
        if self._velocity is not None:
            self._velocity.close()


def _missing(n: int) -> FeatureBatch:
    return FeatureBatch(
        matrix=np.full((n, len(MATRIX_COLUMNS)), np.nan, dtype=np.float32),
        tags=np.zeros((n, 0), dtype=np.uint8),
        found=np.zeros(n, dtype=bool),
        event_ts=np.zeros(n, dtype=np.int64),
    )
