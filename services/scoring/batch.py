"""The compact form a batch takes across the Ray hop.

A batch is a handful of numpy arrays and one bytes blob of merchant ids, never
a list of per-request objects: Ray serializes numpy buffers out of band, so the
cost of a hop barely grows with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# Per-item status codes are gRPC status codes: 0 = decided.
OK = 0
STAGES = ("idempotency_lookup", "feature_read", "kernel", "policy", "idempotency_save")


@dataclass(frozen=True)
class RequestBatch:
    application_ids: bytes  # "\n"-joined ASCII ids (validated: no "\n" inside an id)
    merchant_ids: bytes  # "\n"-joined, likewise
    amount_minor: npt.NDArray[np.int64]
    currency: npt.NDArray[np.int8]  # index into services.policy.CURRENCIES
    term_months: npt.NDArray[np.int16]
    product: npt.NDArray[np.int8]  # proto enum value
    channel: npt.NDArray[np.int8]  # proto enum value
    declared_revenue_minor: npt.NDArray[np.float64]  # NaN when not declared
    deadline: npt.NDArray[np.float64]  # absolute Unix time; inf = none
    trace: str = ""  # "\n"-joined W3C traceparents of the sampled requests inside

    def __len__(self) -> int:
        return int(self.amount_minor.shape[0])

    def ids(self) -> list[str]:
        return self.merchant_ids.decode("ascii").split("\n") if len(self) else []

    def app_ids(self) -> list[str]:
        return self.application_ids.decode("ascii").split("\n") if len(self) else []

    @staticmethod
    def concat(batches: list[RequestBatch]) -> RequestBatch:
        if len(batches) == 1:
            return batches[0]
        return RequestBatch(
            application_ids=b"\n".join(b.application_ids for b in batches if len(b)),
            merchant_ids=b"\n".join(b.merchant_ids for b in batches if len(b)),
            amount_minor=np.concatenate([b.amount_minor for b in batches]),
            currency=np.concatenate([b.currency for b in batches]),
            term_months=np.concatenate([b.term_months for b in batches]),
            product=np.concatenate([b.product for b in batches]),
            channel=np.concatenate([b.channel for b in batches]),
            declared_revenue_minor=np.concatenate([b.declared_revenue_minor for b in batches]),
            deadline=np.concatenate([b.deadline for b in batches]),
            trace="\n".join(b.trace for b in batches if b.trace),
        )


@dataclass(frozen=True)
class ResponseBatch:
    status: npt.NDArray[np.int8]  # gRPC code per item, 0 = decided
    decision: npt.NDArray[np.int8]
    approved_minor: npt.NDArray[np.int64]
    apr_bps: npt.NDArray[np.int32]
    grade: npt.NDArray[np.int8]  # index into grade_letters, -1 none
    pd: npt.NDArray[np.float64]
    reason: npt.NDArray[np.int16]  # (n, R) index into reason_table, -1 none
    reason_contrib: npt.NDArray[np.float32]
    feature_age_s: npt.NDArray[np.float32]  # NaN when unknown
    stale: npt.NDArray[np.bool_]
    degraded: npt.NDArray[np.bool_]
    version: npt.NDArray[np.int8]  # index into versions
    decision_ids: bytes  # "\n"-joined, one per item ("" where not decided)
    versions: tuple[tuple[str, str], ...]  # (model version, policy version)
    grade_letters: tuple[str, ...]
    reason_table: tuple[tuple[str, str], ...]
    message: str = ""  # why items with a non-zero status were not decided
    # Replica seconds per stage for this batch, in STAGES order (recorded by the front end).
    stage_s: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(len(STAGES), dtype=np.float32))

    def __len__(self) -> int:
        return int(self.status.shape[0])

    def decision_id_list(self) -> list[str]:
        return self.decision_ids.decode("ascii").split("\n") if len(self) else []

    def slice(self, start: int, stop: int) -> ResponseBatch:
        s = slice(start, stop)
        ids = self.decision_id_list()[s]
        return ResponseBatch(
            self.status[s], self.decision[s], self.approved_minor[s], self.apr_bps[s],
            self.grade[s], self.pd[s], self.reason[s], self.reason_contrib[s],
            self.feature_age_s[s], self.stale[s], self.degraded[s], self.version[s],
            "\n".join(ids).encode("ascii"), self.versions, self.grade_letters, self.reason_table, self.message,
            self.stage_s,
        )
