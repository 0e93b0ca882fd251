"""What each variant decided, for the dashboards that compare a champion with its challengers.

Per variant (``champion``, each challenger and each shadow, by arm name) and role
(``answer``: it decided the rows it was assigned; ``shadow``: it scored every row and
answered none): decisions scored, approvals, the sum of PD and the sum of approved limits.
Rates and means are ratios of these counters over the same window, which is what a
Prometheus query takes (approval rate = rate(approvals) / rate(decisions); mean PD =
rate(pd_sum) / rate(decisions)), and sums add up across replicas where means would not.

Counted per backend call, from the answered rows' ``variant`` column and the batch's
``shadow_stats``: a batch of one variant (no challenger: every batch) costs one comparison
over the column, not a ``np.unique``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from services.schema.enums import APPROVE

FIELDS = ("decisions", "approvals", "pd_sum", "approved_minor_sum")
_DESCRIPTIONS = {
    "decisions": "Decisions scored by variant and role (answer: decided its rows; shadow: scored, not answered)",
    "approvals": "Approvals by variant and role",
    "pd_sum": "Sum of PD over scored decisions by variant and role (mean PD = rate(pd_sum) / rate(decisions))",
    "approved_minor_sum": "Sum of approved limits, base-currency minor units, by variant and role",
}


class VariantTally:
    """Running sums keyed by (variant, role); read by observable counters at collection."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], list[float]] = {}

    def add(self, rows: np.ndarray, shadow_stats: Mapping[str, Sequence[float]]) -> None:
        ok = rows["status"] == 0
        variant = rows["variant"]
        if len(variant) and (variant == variant[0]).all():
            self._add_rows(variant[0].decode() or "champion", rows[ok])
        elif len(variant):
            for name in np.unique(variant[ok]).tolist():
                self._add_rows(name.decode() or "champion", rows[ok & (variant == name)])
        for name, stats in shadow_stats.items():
            self._bump((name, "shadow"), stats)

    def _add_rows(self, name: str, rows: np.ndarray) -> None:
        pd = rows["pd"]
        scored = ~np.isnan(pd)
        self._bump((name, "answer"), (float(scored.sum()), float((rows["decision"] == APPROVE).sum()),
                                      float(pd[scored].sum()), float(rows["approved_minor"].sum())))

    def _bump(self, key: tuple[str, str], stats: Sequence[float]) -> None:
        sums = self._sums.get(key)
        if sums is None:
            sums = self._sums[key] = [0.0] * len(FIELDS)
        for i, v in enumerate(stats[: len(FIELDS)]):
            sums[i] += v

    def register(self, meter: Any, observation: Any) -> None:
        """One observable counter per field on ``meter`` (``creditauth.variant.<field>``)."""
        for i, field in enumerate(FIELDS):
            meter.create_observable_counter(f"creditauth.variant.{field}", callbacks=[self._observer(i, observation)],
                                            description=_DESCRIPTIONS[field])

    def _observer(self, i: int, observation: Any) -> Any:
        def observe(_options: Any) -> Iterator[Any]:
            for (variant, role), sums in list(self._sums.items()):
                yield observation(sums[i], {"variant": variant, "role": role})

        return observe
