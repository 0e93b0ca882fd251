"""The API over a real gRPC channel into the real front end and engine, in one process (no Ray)."""

from __future__ import annotations

import grpc

from services.frontend import FrontEnd
from tests.e2e import api_checks as c


def test_unary(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_unary(local_server[0])


def test_unknown_merchant_is_review_no_history(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_unknown_merchant(local_server[0])


def test_bad_inputs_are_invalid_argument_naming_the_field(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_bad_inputs(local_server[0])


def test_batch_with_bad_and_unknown_items(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_batch(local_server[0])


def test_stream_answers_every_request_in_order(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_stream(local_server[0])


def test_health_and_reflection(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_health_and_reflection(local_server[0])


def test_expired_deadline(local_server: tuple[grpc.Channel, FrontEnd]) -> None:
    c.check_deadline(local_server[0])
