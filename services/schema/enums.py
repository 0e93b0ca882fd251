"""The API's enumerations, read from the proto (never re-declared by hand)."""

from __future__ import annotations

from creditauth.v1 import authorization_pb2 as pb

APPROVE: int = pb.DECISION_APPROVE
DECLINE: int = pb.DECISION_DECLINE
REVIEW: int = pb.DECISION_REVIEW


def _names(enum: object, prefix: str) -> tuple[str, ...]:
    """The named values of a proto enum, 1..n in value order, without the enum's prefix."""
    pairs = sorted((v, k) for k, v in enum.items() if v != 0)  # type: ignore[attr-defined]
    assert [v for v, _ in pairs] == list(range(1, len(pairs) + 1)), f"{prefix}* values must be 1..n"
    return tuple(k.removeprefix(prefix) for _, k in pairs)


# Product i is PRODUCTS[i - 1] ("WORKING_CAPITAL", ...); likewise channels.
PRODUCTS: tuple[str, ...] = _names(pb.Product, "PRODUCT_")
CHANNELS: tuple[str, ...] = _names(pb.Channel, "CHANNEL_")
