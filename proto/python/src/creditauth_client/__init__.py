"""Python client for the creditauth gRPC API.

Needs only grpcio, protobuf and googleapis-common-protos. The generated messages and
stubs are in :mod:`creditauth_client.v1` (``authorization_pb2``, ``controls_pb2`` and
their ``_grpc`` modules, typed by mypy-protobuf stubs).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from creditauth_client.aio import AsyncAuthorizationClient
from creditauth_client.client import AuthorizationClient
from creditauth_client.connection import BearerToken, Tls, service_config
from creditauth_client.errors import ErrorDetails, FieldViolation, error_details, item_error_details
from creditauth_client.retry import AsyncRetryInterceptor, RetryInterceptor, RetryPolicy, Timeouts
from creditauth_client.v1 import authorization_pb2 as pb

try:
    __version__ = version("creditauth-client")
except PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"


def authorize_request(
    application_id: str, merchant_id: str, amount_minor: int, currency: str, *, term_months: int = 12,
    product: pb.Product.ValueType = pb.PRODUCT_WORKING_CAPITAL, channel: pb.Channel.ValueType = pb.CHANNEL_WEB,
    declared_monthly_revenue_minor: int | None = None,
) -> pb.AuthorizeRequest:
    """An ``AuthorizeRequest`` from plain values (money in minor units, never a float)."""
    req = pb.AuthorizeRequest(
        application_id=application_id, merchant_id=merchant_id, term_months=term_months,
        product=product, channel=channel,
        requested_amount=pb.Money(amount_minor=amount_minor, currency=currency),
    )
    if declared_monthly_revenue_minor is not None:
        req.declared_monthly_revenue_minor = declared_monthly_revenue_minor
    return req


__all__ = [
    "AsyncAuthorizationClient",
    "AsyncRetryInterceptor",
    "AuthorizationClient",
    "BearerToken",
    "ErrorDetails",
    "FieldViolation",
    "RetryInterceptor",
    "RetryPolicy",
    "Timeouts",
    "Tls",
    "__version__",
    "authorize_request",
    "error_details",
    "item_error_details",
    "pb",
    "service_config",
]
