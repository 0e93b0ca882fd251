"""``creditauth authorize`` and ``creditauth health``: call a running front end, as a caller would.

Plaintext by default (a front end on loopback started with ``--plaintext``); ``--tls-ca``
checks the server's certificate, ``--cert``/``--key`` present a client certificate (mutual
TLS), ``--token-file`` sends ``authorization: Bearer <token>``. A refusal prints the status,
its message and its ``google.rpc`` details, and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_client(sub: _Subparsers) -> None:
    az = sub.add_parser("authorize", help="send one AuthorizeRequest to a running front end; print the answer")
    _connection(az)
    az.add_argument("--merchant", required=True, help="merchant id, e.g. M00000001")
    az.add_argument("--amount", type=int, required=True, help="requested amount in minor units (cents, fen)")
    az.add_argument("--currency", default="CNY", help="ISO-4217 code (default CNY)")
    az.add_argument("--term", type=int, default=12, help="term in months (default 12)")
    az.add_argument("--product", default="WORKING_CAPITAL", help="product without PRODUCT_ (default WORKING_CAPITAL)")
    az.add_argument("--channel", default="WEB", help="channel name without CHANNEL_ (default WEB)")
    az.add_argument("--application-id", help="idempotency key (default: a fresh one)")
    az.set_defaults(run=authorize, no_settings=True)
    hc = sub.add_parser("health", help="ask a running front end's health service; exit 0 when SERVING")
    _connection(hc)
    hc.add_argument("--service", default="", help="service name to ask about (default: the server as a whole)")
    hc.set_defaults(run=health, no_settings=True)


def _connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the front end (default 127.0.0.1:50051)")
    g.add_argument("--tls-ca", type=Path, help="connect with TLS, checking the server against this CA (PEM)")
    g.add_argument("--tls-name", help="the name the server certificate must carry (default: the target's host)")
    g.add_argument("--cert", type=Path, help="client certificate (PEM) for mutual TLS")
    g.add_argument("--key", type=Path, help="client key (PEM) for mutual TLS")
    g.add_argument("--token-file", type=Path, help="a file holding a bearer token (JWT) to send")
    g.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")


def _channel(args: argparse.Namespace) -> grpc.Channel:
    import grpc

    if args.tls_ca is None:
        return grpc.insecure_channel(args.target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.key.read_bytes() if args.key else None,
        certificate_chain=args.cert.read_bytes() if args.cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.tls_name)] if args.tls_name else []
    return grpc.secure_channel(args.target, creds, options=options)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.token_file is None:
        return []
    return [("authorization", f"Bearer {args.token_file.read_text().strip()}")]


def _enum(enum: Any, prefix: str, name: str, option: str) -> int:
    try:
        value: int = enum.Value(prefix + name.upper())
    except ValueError:
        known = [n.removeprefix(prefix) for n in enum.DESCRIPTOR.values_by_name if not n.endswith("UNSPECIFIED")]
        raise SystemExit(f"{option}: unknown {name!r} (one of {', '.join(known)})") from None
    return value


def authorize(_settings: object, args: argparse.Namespace) -> None:
    import grpc
    from google.protobuf import json_format

    from creditauth.v1 import authorization_pb2 as pb
    from creditauth.v1 import authorization_pb2_grpc as pb_grpc

    req = pb.AuthorizeRequest(
        application_id=args.application_id or f"cli-{uuid.uuid4().hex[:16]}",
        merchant_id=args.merchant, term_months=args.term,
        product=_enum(pb.Product, "PRODUCT_", args.product, "--product"),
        channel=_enum(pb.Channel, "CHANNEL_", args.channel, "--channel"),
    )
    req.requested_amount.amount_minor = args.amount
    req.requested_amount.currency = args.currency
    with _channel(args) as channel:
        try:
            resp = pb_grpc.CreditAuthorizationStub(channel).Authorize(
                req, timeout=args.timeout, metadata=_metadata(args)
            )
        except grpc.RpcError as err:
            _refused(err)
    print(json.dumps(json_format.MessageToDict(resp, preserving_proto_field_name=True), indent=2))


def _refused(err: grpc.RpcError) -> None:
    from google.protobuf import json_format
    from google.rpc import status_pb2

    from services.frontend.details import TRAILER

    call: Any = err  # a grpc.Call as well as an RpcError
    out: dict[str, Any] = {"code": call.code().name, "message": call.details()}
    raw = next((v for k, v in call.trailing_metadata() or () if k == TRAILER), None)
    if raw:
        out["details"] = json_format.MessageToDict(status_pb2.Status.FromString(raw))["details"]
    print(json.dumps(out, indent=2), file=sys.stderr)
    raise SystemExit(1)


def health(_settings: object, args: argparse.Namespace) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(args) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, metadata=_metadata(args)
            ).status
        except grpc.RpcError as err:
            _refused(err)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise SystemExit(1)
