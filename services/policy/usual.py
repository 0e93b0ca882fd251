"""Velocity against the merchant's own usual rate: the policy's ``velocity.above_usual`` rule.

The absolute thresholds (``review_apps_1h``, ``review_apps_24h``) refer a burst the same
way for a chain that refinances every week and a shop that applies once a year. This rule
compares the live counts with the merchant's usual rate of applications, materialized
offline as ``apps_usual_per_day`` (``features.early_warning.usual``) and read from the
feature matrix like any feature a rule names::

    fires = apps_24h > max(min_apps_24h, multiple x usual)
         or apps_1h  > max(min_apps_1h,  multiple x usual / 24)

The floors keep a merchant whose usual rate is nil from being referred for its second
application. A null usual rate (no usable history) never fires: the absolute thresholds
still apply to it. Resolved once per load, then a few numpy operations per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.errors import ConfigError
from services.policy.config import AboveUsual

USUAL_COLUMN = "apps_usual_per_day"
HOURS_PER_DAY = 24.0


class UsualVelocity:
    """The ``above_usual`` rule resolved against the feature columns the policy reads."""

    def __init__(self, config: AboveUsual | None, feature_columns: Sequence[str]) -> None:
        self.config = config
        self._col = -1
        if config is None:
            return
        if USUAL_COLUMN not in feature_columns:
            # As a rule naming an unknown feature: a misconfiguration, refused at load.
            raise ConfigError(f"policy velocity.above_usual reads feature {USUAL_COLUMN!r}, "
                              "which the feature columns lack")
        self._col = list(feature_columns).index(USUAL_COLUMN)

    @property
    def width(self) -> int:
        """Reason columns the rule takes: one when set, none otherwise."""
        return 0 if self.config is None else 1

    def fires(
        self, apps_1h: npt.NDArray[np.float64], apps_24h: npt.NDArray[np.float64],
        features: npt.NDArray[np.float32] | None,
    ) -> npt.NDArray[np.bool_]:
        """Per row: the counts run above the merchant's usual rate (False without one)."""
        n = apps_24h.shape[0]
        u = self.config
        if u is None or features is None:
            return np.zeros(n, dtype=bool)
        usual = features[:, self._col].astype(np.float64)
        known = ~np.isnan(usual)
        usual = np.where(known, usual, 0.0)
        out = apps_24h > np.maximum(u.min_apps_24h, u.multiple * usual)
        if u.min_apps_1h is not None:
            out |= apps_1h > np.maximum(u.min_apps_1h, u.multiple * usual / HOURS_PER_DAY)
        fired: npt.NDArray[np.bool_] = out & known
        return fired
