"""Request mixes drawn from the synthetic population (read from its parquet files).

The population is data to us, never code: we read ``raw/applications/*.parquet``
and build requests the way callers would. Each request is tagged with the
answer we *expect*, so a deliberately bad request answered INVALID_ARGUMENT is
counted as correct, not as a failure.
"""

from __future__ import annotations

import os
import re
from enum import IntEnum
from pathlib import Path

import numpy as np
import polars as pl

from creditauth.v1 import authorization_pb2 as pb

_CHANNEL = {
    n: pb.Channel.Value(f"CHANNEL_{n}")
    for n in ("POS_TERMINAL", "MOBILE_APP", "WEB", "PARTNER_API", "BRANCH")
}
_PRODUCT = {
    n: pb.Product.Value(f"PRODUCT_{n}")
    for n in ("WORKING_CAPITAL", "INVENTORY", "EQUIPMENT", "MERCHANT_CASH_ADVANCE")
}
# Random draws are made this many at a time: numpy's per-call overhead would
# otherwise cost more than building the request itself.
_BLOCK = 1024


class Kind(IntEnum):
    """What a request is, and so which answer is correct for it."""

    GOOD = 0  # a known merchant: expect a decision
    UNKNOWN = 1  # a well-formed id the population does not know: expect a decision
    BAD = 2  # invalid on purpose: expect INVALID_ARGUMENT


_KINDS = tuple(Kind)  # by value, without Enum.__call__ per request
# One way of being invalid per validation path of the API, so every path is exercised.
BAD_VARIANTS = ("negative_amount", "unknown_currency", "missing_merchant", "term_out_of_range")


def population_files(data_dir: Path) -> Path:
    """The applications parquet directory, or a clear error naming what is missing."""
    apps = data_dir / "raw" / "applications"
    if not apps.is_dir() or not any(apps.glob("*.parquet")):
        raise FileNotFoundError(
            f"no synthetic population under {data_dir} (expected {apps}/*.parquet); "
            "run `creditauth data generate --data-dir DIR` or pass --data-dir"
        )
    return apps


class RequestMix:
    """Realistic requests: skewed merchant popularity, amounts and terms from past applications."""

    def __init__(
        self,
        data_dir: Path,
        *,
        seed: int = 1,
        unknown_share: float = 0.01,
        invalid_share: float = 0.0,
        zipf: float = 1.01,
        id_prefix: str | None = None,
    ) -> None:
        apps = pl.read_parquet(population_files(data_dir) / "*.parquet")
        self._merchants: list[str] = apps["merchant_id"].to_list()
        self._amount = apps["amount_minor"].to_numpy()
        self._term = apps["term_months"].to_numpy()
        self._channel = [_CHANNEL[c] for c in apps["channel"].to_list()]
        self._product = [_PRODUCT[p] for p in apps["product"].to_list()]
        self._declared: list[int | None] = apps["declared_monthly_revenue_minor"].to_list()
        self._currency = (
            apps["currency"].to_list() if "currency" in apps.columns else ["CNY"] * len(apps)
        )
        self._rng = np.random.default_rng(seed)
        self._unknown = unknown_share
        self._invalid = invalid_share
        self._zipf = zipf
        # The API is idempotent on application_id: ids must not repeat across runs,
        # or a second run would be answered from the first run's decisions.
        self._prefix = id_prefix if id_prefix is not None else f"lt-{os.urandom(4).hex()}"
        if not re.fullmatch(r"[A-Za-z0-9._:-]{0,40}", self._prefix):
            raise ValueError(f"id_prefix must be at most 40 characters of [A-Za-z0-9._:-], got {id_prefix!r}")
        self._seq = 0
        self._pos = _BLOCK
        self._block: list[tuple[int, Kind, int]] = []
        self._templates: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._merchants)

    def _refill(self) -> None:
        # Zipf popularity over a shuffled order: a few merchants apply often.
        k = self._rng.zipf(self._zipf, _BLOCK) - 1
        u = self._rng.random(_BLOCK)
        kinds = np.where(
            u < self._invalid, Kind.BAD, np.where(u < self._invalid + self._unknown, Kind.UNKNOWN, Kind.GOOD)
        )
        # Plain lists: indexing numpy arrays one element at a time is slow.
        self._block = list(
            zip(
                ((k * 2654435761) % len(self._merchants)).tolist(),
                [_KINDS[x] for x in kinds.tolist()],
                self._rng.integers(0, len(BAD_VARIANTS), _BLOCK).tolist(),
                strict=True,
            )
        )
        self._pos = 0

    def _draw(self) -> tuple[int, Kind, int]:
        if self._pos >= _BLOCK:
            self._refill()
        self._pos += 1
        self._seq += 1
        return self._block[self._pos - 1]

    def _build(self, i: int, kind: Kind, variant: int, application_id: str) -> pb.AuthorizeRequest:
        req = pb.AuthorizeRequest(
            application_id=application_id,
            merchant_id=self._merchants[i] if kind != Kind.UNKNOWN else f"UNKNOWN{self._seq}",
            term_months=int(self._term[i]),
            product=self._product[i],
            channel=self._channel[i],
        )
        req.requested_amount.amount_minor = int(self._amount[i])
        req.requested_amount.currency = self._currency[i]
        declared = self._declared[i]
        if declared is not None:
            req.declared_monthly_revenue_minor = int(declared)
        if kind == Kind.BAD:
            _spoil(req, BAD_VARIANTS[variant])
        return req

    def _application_id(self) -> str:
        return f"{self._prefix}-{self._seq:x}"

    def next_tagged(self) -> tuple[pb.AuthorizeRequest, Kind]:
        i, kind, variant = self._draw()
        return self._build(i, kind, variant, self._application_id()), kind

    def next(self) -> pb.AuthorizeRequest:
        return self.next_tagged()[0]

    def tagged_batch(self, n: int) -> tuple[pb.AuthorizeBatchRequest, list[Kind]]:
        pairs = [self.next_tagged() for _ in range(n)]
        return pb.AuthorizeBatchRequest(requests=[r for r, _ in pairs]), [k for _, k in pairs]

    def batch(self, n: int) -> pb.AuthorizeBatchRequest:
        return self.tagged_batch(n)[0]

    # --- pre-encoded requests --------------------------------------------------
    # Building a request message in Python costs ~20 us, which would make the
    # generator, not the system, the bottleneck of a batch run on a small box.
    # A request for a known merchant is the same bytes every time except its
    # application_id, so we serialize each merchant's request once and prepend
    # the id field (protobuf accepts fields in any order): ~1-2 us per request.

    def next_encoded(self) -> tuple[bytes, Kind]:
        """One serialized ``AuthorizeRequest`` and what it is."""
        i, kind, variant = self._draw()
        if kind == Kind.GOOD:
            body = self._templates.get(i)
            if body is None:
                body = self._templates[i] = self._build(i, kind, variant, "").SerializeToString()
        else:
            body = self._build(i, kind, variant, "").SerializeToString()
        aid = f"{self._prefix}-{self._seq:x}".encode()
        # Field 1 (application_id): tag 0x0A, then its length (ids are < 128 bytes).
        return b"\x0a" + bytes((len(aid),)) + aid + body, kind

    def batch_encoded(self, n: int) -> tuple[bytes, list[Kind]]:
        """One serialized ``AuthorizeBatchRequest`` of ``n`` requests, and what each is."""
        parts: list[bytes] = []
        kinds: list[Kind] = []
        for _ in range(n):
            item, kind = self.next_encoded()
            parts.append(_field_header(1, len(item)))
            parts.append(item)
            kinds.append(kind)
        return b"".join(parts), kinds


_SHORT_HEADERS = [bytes(((1 << 3) | 2, n)) for n in range(128)]


def _field_header(number: int, n: int) -> bytes:
    """Tag and varint length of a length-delimited protobuf field."""
    if number == 1 and n < 128:
        return _SHORT_HEADERS[n]
    out = bytearray([(number << 3) | 2])
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _spoil(req: pb.AuthorizeRequest, variant: str) -> None:
    if variant == "negative_amount":
        req.requested_amount.amount_minor = -max(1, req.requested_amount.amount_minor)
    elif variant == "unknown_currency":
        req.requested_amount.currency = "XXZ"
    elif variant == "missing_merchant":
        req.merchant_id = ""
    elif variant == "term_out_of_range":
        req.term_months = 0
    else:  # pragma: no cover - BAD_VARIANTS is closed
        raise ValueError(variant)
