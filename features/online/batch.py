"""What one batched online read returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class FeatureBatch:
    """Features for ``n`` merchants, row ``i`` answering the ``i``-th requested id.

    matrix:   float32 ``(n, len(catalog.MATRIX_COLUMNS))``, NaN where a value is missing.
    tags:     uint8 ``(n, tag_bytes)``; tag ``t`` is bit ``t % 8`` of byte ``t // 8``.
              All zero for merchants without tags.
    found:    bool ``(n,)``: the merchant has at least one batch-feature row.
    event_ts: int64 ``(n,)``: Unix seconds of the oldest feature row read, 0 if none.
    """

    matrix: npt.NDArray[np.float32]
    tags: npt.NDArray[np.uint8]
    found: npt.NDArray[np.bool_]
    event_ts: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def age_s(self, now_s: float) -> npt.NDArray[np.float64]:
        """Age of each row's oldest feature in seconds (NaN for unknown merchants)."""
        age = now_s - self.event_ts.astype(np.float64)
        return np.where(self.event_ts > 0, age, np.nan)

    def tag_words(self) -> npt.NDArray[np.uint64]:
        """The tags as little-endian uint64 words: tag ``t`` is bit ``t % 64`` of word ``t // 64``."""
        return np.ascontiguousarray(self.tags).view("<u8")
