"""Named stage timers: where a replica's time per batch goes, by stage name.

The timings travel back with each batch (``DecisionBatch.stage_s``) and the front end
records them in ``creditauth.stage.duration`` by stage, so one scrape shows the path.
"""

from __future__ import annotations

import time
from types import TracebackType

# The pipeline's stages, in the order a batch goes through them.
STAGES: tuple[str, ...] = ("idempotency_lookup", "feature_read", "kernel", "policy", "idempotency_save")


class _Stage:
    __slots__ = ("_name", "_t0", "_timer")

    def __init__(self, timer: StageTimer, name: str) -> None:
        self._timer = timer
        self._name = name
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._timer.seconds[self._name] += time.perf_counter() - self._t0


class StageTimer:
    """``with timer("kernel"): ...`` adds the block's seconds to ``timer.seconds["kernel"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._stages = {name: _Stage(self, name) for name in STAGES}

    def __call__(self, name: str) -> _Stage:
        return self._stages[name]
