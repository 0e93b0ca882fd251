"""What a batch needs from the online store: velocity counts and features, in one stage.

Whatever cannot be had is said so, never papered over: if the features cannot be read
every row is unknown and ``features_missing`` is set; if the velocity update fails the
reader's counts (possibly cached, up to the cache's TTL old) are kept and
``velocity_missing`` is set. The policy's degraded modes decide what each means per
product (refer, a capped limit or ``UNAVAILABLE``), and every such decision is flagged.

``ready`` is what the last batch saw: False while a store part fails (its breaker open),
True again after the first batch that reads both, without a restart.
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
    features_missing: bool = False  # the features could not be read: decide without them
    velocity_missing: bool = False  # the velocity update failed: counts are not this batch's

    @property
    def degraded(self) -> bool:
        """Anything missing: the batch is decided in degraded mode."""
        return self.features_missing or self.velocity_missing


class FeatureStage:
    def __init__(self, reader: OnlineReader, velocity: VelocityRecorder | None) -> None:
        self._reader = reader
        self._velocity = velocity
        self.ready = True  # nothing has failed yet (the first batch will tell)

    def gather(self, merchants: list[str], now: float) -> Gathered:
        counts, velocity_ok = self._record(merchants, now)
        try:
            feats = self._reader.read(merchants)
        except FeatureError as exc:
            # The online store is down or slow: decide by the policy's degraded modes rather than fail.
            # Said once per outage (then per batch at debug): an open breaker fails every batch.
            log.log(logging.WARNING if self.ready else logging.DEBUG,
                    "online store unavailable, deciding in degraded mode: %s", exc)
            self.ready = False
            return Gathered(_missing(len(merchants)), features_missing=True, velocity_missing=not velocity_ok)
        self.ready = velocity_ok
        if counts is not None:
            feats.matrix[:, _APPS_1H] = counts.apps_1h
            feats.matrix[:, _APPS_24H] = counts.apps_24h
        return Gathered(feats, velocity_missing=not velocity_ok)

    def _record(self, merchants: list[str], now: float) -> tuple[VelocityCounts | None, bool]:
        """Count this batch's applications (one round trip); the counts that come back include
        them, so the velocity rule fires on the n-th application in the window, across every
        replica, whatever the reader cached. Second: whether the update succeeded (True
        when velocity is not recorded at all: nothing is missing then)."""
        if self._velocity is None:
            return None, True
        try:
            return self._velocity.record(merchants, now), True
        except FeatureError as exc:
            log.log(logging.WARNING if self.ready else logging.DEBUG,
                    "velocity update failed, decisions flagged degraded: %s", exc)
            return None, False

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
