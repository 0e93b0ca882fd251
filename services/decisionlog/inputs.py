"""What a logged decision was decided from, read back: the inputs a ``Decider`` is given.

``LoggedFeatures`` answers the logged feature ages (the decision's ``now`` is not logged;
see ``services.decisionlog.replay``); ``Inputs`` holds the requests, those features and,
per row, which input the engine went without.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from features import FeatureBatch
from services.schema.records import Rows

F64 = npt.NDArray[np.float64]
FEATURES_MISSING, VELOCITY_MISSING = 1, 2


@dataclass(frozen=True)
class LoggedFeatures(FeatureBatch):
    """A feature batch read back from the log: its ages are the ones logged with it."""

    logged_age_s: F64 = field(default_factory=lambda: np.zeros(0))

    def age_s(self, now_s: float) -> F64:
        # The decision's ``now`` is not logged; the age it gave is (see the module docstring).
        return self.logged_age_s


@dataclass(frozen=True)
class Inputs:
    """What the decider is given for ``n`` decisions (one batch or a whole log)."""

    requests: Rows
    features: LoggedFeatures
    # Per row, the input the engine went without: 0 none, else FEATURES_MISSING | VELOCITY_MISSING.
    missing: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.requests.shape[0])

    def take(self, rows: npt.NDArray[np.intp]) -> Inputs:
        f = self.features
        view_ts = f.view_ts[rows] if f.view_ts is not None else None
        feats = LoggedFeatures(
            np.ascontiguousarray(f.matrix[rows]), np.ascontiguousarray(f.tags[rows]), f.found[rows],
            f.event_ts[rows], view_ts, f.max_age_s, f.logged_age_s[rows],
        )
        return Inputs(self.requests[rows], feats, self.missing[rows])
