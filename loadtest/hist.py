"""Fast reads of an HdrHistogram: percentiles, mean, standard deviation, ``.hgrm`` levels.

The ``hdrh`` package answers each percentile, the mean and the standard
deviation with a Python loop over every bucket (~23,000 for our one-hour
range), which makes a report of a few phases take seconds. We read its
counts once into numpy and answer everything from a cumulative sum, with the
same semantics as ``HdrHistogram.get_value_at_percentile``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

_VALUES: dict[tuple[int, int, int], tuple[npt.NDArray[np.int64], ...]] = {}


def _index_values(h: HdrHistogram) -> tuple[npt.NDArray[np.int64], ...]:
    """Per bucket index: lowest, highest and median equivalent values (cached per layout)."""
    key = (h.counts_len, h.sub_bucket_half_count_magnitude, h.unit_magnitude)
    if key not in _VALUES:
        # HdrHistogram's index -> value mapping (get_value_from_index), vectorized:
        # bucket b holds sub-buckets [half, 2 * half) of width 2^(b + unit); bucket 0
        # also holds [0, half).
        half_mag, half, unit = h.sub_bucket_half_count_magnitude, h.sub_bucket_half_count, h.unit_magnitude
        i = np.arange(h.counts_len, dtype=np.int64)
        bucket = (i >> half_mag) - 1
        sub = (i & (half - 1)) + half
        sub = np.where(bucket < 0, sub - half, sub)
        bucket = np.maximum(bucket, 0)
        low = sub << (bucket + unit)
        size = np.left_shift(np.int64(1), bucket + unit)
        _VALUES[key] = (low, low + size - 1, low + (size >> 1))
    return _VALUES[key]


class Quantiles:
    def __init__(self, h: HdrHistogram) -> None:
        counts = np.ctypeslib.as_array(h.counts).astype(np.int64)
        self.cum = np.cumsum(counts)
        self.total = int(self.cum[-1]) if len(self.cum) else 0
        self.low, self.high, self.mid = _index_values(h)
        self._counts = counts
        self.max = int(h.get_max_value())

    def _index(self, percentile: float) -> int:
        target = max(int(min(percentile, 100.0) * self.total / 100 + 0.5), 1)
        return int(np.searchsorted(self.cum, target, side="left"))

    def value_at(self, percentile: float) -> int:
        """As ``HdrHistogram.get_value_at_percentile``."""
        if not self.total:
            return 0
        i = self._index(percentile)
        return int(self.high[i] if percentile else self.low[i])

    def mean(self) -> float:
        return float(np.dot(self._counts, self.mid) / self.total) if self.total else 0.0

    def stddev(self) -> float:
        if not self.total:
            return 0.0
        dev = self.mid - self.mean()
        return math.sqrt(float(np.dot(self._counts, dev * dev)) / self.total)

    def levels(self, ticks_per_half_distance: int = 5) -> list[tuple[int, float, int]]:
        """(value, percentile 0..1, count at or below) at HdrHistogram's reporting levels.

        Levels get denser towards 100%: each halving of the distance to 100% gets
        ``ticks_per_half_distance`` more (the ``.hgrm`` convention).
        """
        out: list[tuple[int, float, int]] = []
        if not self.total:
            return out
        level = 0.0
        while level < 100.0:
            i = self._index(level)
            out.append((int(self.high[i] if level else self.low[i]), level / 100.0, int(self.cum[i])))
            if self.cum[i] >= self.total:
                break
            ticks = ticks_per_half_distance * 2 ** (math.floor(math.log2(100.0 / (100.0 - level))) + 1)
            level += 100.0 / ticks
        out.append((int(self.high[self._index(100.0)]), 1.0, self.total))
        return out
