"""Named stage timers: where a replica's time per batch goes, by stage name.

The timings travel back with each batch (``DecisionBatch.stage_s``) and the front end
records them in ``creditauth.stage.duration`` by stage, so one scrape shows the path.
"""

from __future__ import annotations

import time
from types import TracebackType

# The pipeline's stages, in the order a batch goes through them (each is a column of the
# decision log). ``exposure``: reserving and settling the merchants' exposure caps.
STAGES: tuple[str, ...] = ("idempotency_lookup", "feature_read", "kernel", "policy", "exposure", "idempotency_save")
# Timed after the decision log has the batch's stages: in the stage metric and the trace only.
AFTER_LOG: tuple[str, ...] = ("log_write",)


class _Stage:
    __slots__ = ("_name", "_t0", "_timer", "_wall0")

    def __init__(self, timer: StageTimer, name: str) -> None:
        self._timer = timer
        self._name = name
        self._t0 = 0.0
        self._wall0 = 0

    def __enter__(self) -> None:
        if self._timer.intervals is not None:
            self._wall0 = time.time_ns()
        self._t0 = time.perf_counter()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._timer.seconds[self._name] += time.perf_counter() - self._t0
        if self._timer.intervals is not None:
            self._timer.intervals.append((self._name, self._wall0, time.time_ns()))


class StageTimer:
    """``with timer("kernel"): ...`` adds the block's seconds to ``timer.seconds["kernel"]``.

    ``traced``: also keep each block's wall-clock interval (``intervals``: name, start and
    end in ns since the epoch), from which a sampled batch's trace gets a child span per
    stage; untraced batches pay one ``is not None`` per block for it."""

    def __init__(self, *, traced: bool = False) -> None:
        self.seconds: dict[str, float] = dict.fromkeys((*STAGES, *AFTER_LOG), 0.0)
        self._stages = {name: _Stage(self, name) for name in self.seconds}
        self.intervals: list[tuple[str, int, int]] | None = [] if traced else None

    def __call__(self, name: str) -> _Stage:
        return self._stages[name]
