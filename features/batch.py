"""What one batched online read returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features import catalog

# Columns of FeatureBatch.view_ts, in this order.
VIEW_NAMES: tuple[str, ...] = tuple(v.name for v in catalog.ALL_VIEWS)
# A merchant is "found" if any batch view has a row for it (velocity alone does not count:
# recording an application for an unknown merchant creates a velocity row).
_KNOWN_VIEWS = len(catalog.BATCH_VIEWS)


@dataclass(frozen=True)
class FeatureBatch:
    """Features for ``n`` merchants, row ``i`` answering the ``i``-th requested id.

    matrix:    float32 ``(n, len(catalog.MATRIX_COLUMNS))``, C-contiguous, NaN where a
               value is missing (unknown merchant, absent field or null value).
    tags:      uint8 ``(n, tag_bytes)``; tag ``t`` is bit ``t % 8`` of byte ``t // 8``.
               All zero for merchants without tags.
    found:     bool ``(n,)``: the merchant has at least one batch-feature row.
    event_ts:  int64 ``(n,)``: Unix seconds of the oldest feature row read, 0 if none.
    view_ts:   int64 ``(n, len(VIEW_NAMES))``: each view's event time in Unix seconds, 0
               where the view has no row (``None`` if the producer did not track it).
    max_age_s: the configured freshness limit the reader was opened with; ``stale``
               uses it by default.
    """

    matrix: npt.NDArray[np.float32]
    tags: npt.NDArray[np.uint8]
    found: npt.NDArray[np.bool_]
    event_ts: npt.NDArray[np.int64]
    view_ts: npt.NDArray[np.int64] | None = None
    max_age_s: float = math.inf

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def age_s(self, now_s: float) -> npt.NDArray[np.float64]:
        """Age of each row's oldest feature in seconds (NaN for unknown merchants)."""
        age = now_s - self.event_ts.astype(np.float64)
        return np.where(self.event_ts > 0, age, np.nan)

    def stale(self, now_s: float, max_age_s: float | None = None) -> npt.NDArray[np.bool_]:
        """Rows whose oldest feature is older than ``max_age_s`` (default: the configured
        ``FeatureSettings.max_feature_age_s``). Unknown merchants are not stale: they have
        no features to distrust, and ``found`` already says so."""
        limit = self.max_age_s if max_age_s is None else max_age_s
        return (self.event_ts > 0) & (now_s - self.event_ts.astype(np.float64) > limit)

    def tag_words(self) -> npt.NDArray[np.uint64]:
        """The tags as little-endian uint64 words: tag ``t`` is bit ``t % 64`` of word ``t // 64``."""
        return np.ascontiguousarray(self.tags).view("<u8")

    def has_tags(self, tag_ids: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
        """bool ``(n, len(tag_ids))``: whether each row carries each tag."""
        ids = np.asarray(tag_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.tags.shape[1] * 8):
            raise IndexError(f"tag id out of range for {self.tags.shape[1] * 8} bits")
        return ((self.tags[:, ids // 8] >> (ids % 8).astype(np.uint8)) & 1).astype(bool)


def assemble(
    matrix: npt.NDArray[np.float32],
    tags: npt.NDArray[np.uint8],
    view_ts: npt.NDArray[np.int64],
    inverse: npt.NDArray[np.intp] | None,
    max_age_s: float,
) -> FeatureBatch:
    """A FeatureBatch from per-unique-merchant arrays, fanned out to the requested rows."""
    found: npt.NDArray[np.bool_] = np.any(view_ts[:, :_KNOWN_VIEWS] > 0, axis=1)
    present = np.where(view_ts > 0, view_ts, np.iinfo(np.int64).max)
    oldest = present.min(axis=1) if view_ts.shape[1] else np.zeros(len(view_ts), np.int64)
    oldest[oldest == np.iinfo(np.int64).max] = 0
    if inverse is not None:
        matrix, tags, found, oldest, view_ts = (
            matrix[inverse], tags[inverse], found[inverse], oldest[inverse], view_ts[inverse]
        )
    return FeatureBatch(matrix, tags, found, oldest, view_ts, max_age_s)


def unique_ids(ids: Sequence[str]) -> tuple[list[str], npt.NDArray[np.intp] | None]:
    """Distinct ids in first-seen order and, if there were repeats, each input's index among them."""
    index: dict[str, int] = {}
    for m in ids:
        index.setdefault(m, len(index))
    if len(index) == len(ids):
        return list(ids), None
    return list(index), np.fromiter((index[m] for m in ids), np.intp, len(ids))
