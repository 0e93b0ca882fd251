"""Offline frames (polars) -> the column specs the compiled Feast-layout encoders take."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from features import catalog


def columns(frame: pl.DataFrame, fields: tuple[tuple[str, catalog.ValueKind], ...]) -> list[tuple[Any, ...]]:
    """The column specs the C encoders take: values plus a validity mask (nulls -> null Values)."""
    out: list[tuple[Any, ...]] = []
    for name, kind in fields:
        col = frame[name]
        if kind == "bytes":
            out.append(("bytes", col.to_list()))
            continue
        valid = np.ascontiguousarray(col.is_not_null().to_numpy(), dtype=np.uint8)
        if kind == "float32":
            values = np.ascontiguousarray(col.fill_null(0.0).to_numpy(), dtype=np.float32)
        else:
            values = np.ascontiguousarray(col.fill_null(0).to_numpy(), dtype=np.int64)
        out.append((kind, values, valid))
    return out


def epoch_us(col: pl.Series) -> npt.NDArray[np.int64]:
    out: npt.NDArray[np.int64] = np.ascontiguousarray(col.dt.epoch("us").to_numpy(), dtype=np.int64)
    return out


def per_view(
    write: Callable[[catalog.FeatureView, pl.DataFrame, list[bytes]], int],
    views: list[tuple[catalog.FeatureView, pl.DataFrame]],
    keys: list[bytes],
) -> int:
    """``write_entities`` for a store that writes view by view: each view's present rows."""
    written = 0
    for view, frame in views:
        present = frame["event_timestamp"].is_not_null().to_numpy()
        idx = np.flatnonzero(present)
        if idx.size:
            written += write(view, frame.filter(pl.Series(present)), [keys[i] for i in idx])
    return written
