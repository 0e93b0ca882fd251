"""Request mixes drawn from the synthetic population (read from its parquet files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from creditauth.v1 import authorization_pb2 as pb

_CHANNEL = {n: pb.Channel.Value(f"CHANNEL_{n}") for n in ("POS_TERMINAL", "MOBILE_APP", "WEB", "PARTNER_API", "BRANCH")}
_PRODUCT = {
    n: pb.Product.Value(f"PRODUCT_{n}")
    for n in ("WORKING_CAPITAL", "INVENTORY", "EQUIPMENT", "MERCHANT_CASH_ADVANCE")
}


class RequestMix:
    """Realistic requests: skewed merchant popularity, amounts and terms from past applications."""

    def __init__(self, data_dir: Path, *, seed: int = 1, unknown_share: float = 0.01, zipf: float = 1.1) -> None:
        apps = pl.read_parquet(data_dir / "raw" / "applications" / "*.parquet")
        self._merchants = apps["merchant_id"].to_list()
        self._amount = apps["amount_minor"].to_numpy()
        self._term = apps["term_months"].to_numpy()
        self._channel = [_CHANNEL[c] for c in apps["channel"].to_list()]
        self._product = [_PRODUCT[p] for p in apps["product"].to_list()]
        declared = apps["declared_monthly_revenue_minor"].to_list()
        self._declared = declared
        self._rng = np.random.default_rng(seed)
        self._unknown = unknown_share
        self._zipf = zipf
        self._seq = 0

    def _index(self) -> int:
        # Zipf popularity over a shuffled order: a few merchants apply often.
        k = int(self._rng.zipf(self._zipf)) - 1
        return (k * 2654435761) % len(self._merchants)

    def next(self) -> pb.AuthorizeRequest:
        i = self._index()
        self._seq += 1
        req = pb.AuthorizeRequest(
            application_id=f"lt-{self._seq:010d}",
            merchant_id=self._merchants[i] if self._rng.random() >= self._unknown else f"UNKNOWN{self._seq}",
            term_months=int(self._term[i]),
            product=self._product[i],
            channel=self._channel[i],
        )
        req.requested_amount.amount_minor = int(self._amount[i])
        req.requested_amount.currency = "CNY"
        if self._declared[i] is not None:
            req.declared_monthly_revenue_minor = int(self._declared[i])
        return req

    def batch(self, n: int) -> pb.AuthorizeBatchRequest:
        return pb.AuthorizeBatchRequest(requests=[self.next() for _ in range(n)])
