"""The decision record: one fixed-size numpy record per decision (stored for idempotency)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def record_dtype(reasons: int) -> np.dtype[np.void]:
    return np.dtype(
        [
            ("fp", "<u8"),
            ("decision", "i1"),
            ("approved", "<i8"),
            ("apr", "<i4"),
            ("grade", "i1"),
            ("pd", "<f8"),
            ("reason", "<i2", (reasons,)),
            ("contrib", "<f4", (reasons,)),
            ("age", "<f4"),
            ("stale", "?"),
            ("degraded", "?"),
            ("decision_id", "S40"),
            ("model", "S64"),
            ("policy", "S64"),
        ]
    )


def fingerprints(  # noqa: PLR0917 -- one argument per request column
    merchant_ids: Sequence[str],
    amount: npt.NDArray[np.int64],
    currency: npt.NDArray[np.int8],
    term: npt.NDArray[np.int16],
    product: npt.NDArray[np.int8],
    channel: npt.NDArray[np.int8],
    declared: npt.NDArray[np.float64],
) -> npt.NDArray[np.uint64]:
    """A stable 64-bit digest of what was asked (not of when): same request, same digest."""
    n = len(merchant_ids)
    h = np.fromiter((zlib.crc32(m.encode()) for m in merchant_ids), np.uint64, n)
    mix = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for col in (
            amount.astype(np.uint64),
            currency.astype(np.uint64),
            term.astype(np.uint64),
            product.astype(np.uint64),
            channel.astype(np.uint64),
            np.nan_to_num(declared, nan=-1.0).view(np.uint64),
        ):
            h = (h ^ col) * mix
            h ^= h >> np.uint64(29)
    return h


