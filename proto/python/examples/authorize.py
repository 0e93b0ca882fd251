"""One decision, and one refusal read as data. Run against a front end:

    CREDITAUTH_TARGET=127.0.0.1:50051 python authorize.py

Plaintext to loopback by default; set CREDITAUTH_CA (and CREDITAUTH_CERT/CREDITAUTH_KEY for
mutual TLS) for TLS, CREDITAUTH_TOKEN_FILE to send a bearer token.
"""

from __future__ import annotations

import os
import sys
import uuid

import grpc
from creditauth_client import AuthorizationClient, Tls, authorize_request, error_details
from creditauth_client.v1 import authorization_pb2 as pb


def client() -> AuthorizationClient:
    target = os.environ.get("CREDITAUTH_TARGET", "127.0.0.1:50051")
    token_file = os.environ.get("CREDITAUTH_TOKEN_FILE")
    if "CREDITAUTH_CA" in os.environ:
        tls = Tls.from_files(os.environ["CREDITAUTH_CA"], os.environ.get("CREDITAUTH_CERT"),
                             os.environ.get("CREDITAUTH_KEY"))
        return AuthorizationClient(target, tls=tls, token_file=token_file)
    return AuthorizationClient(target, insecure=True, token_file=token_file)


def main() -> int:
    merchant = os.environ.get("CREDITAUTH_MERCHANT", "M00000001")
    with client() as c:
        # application_id is the idempotency key: a retried call gets the same decision.
        request = authorize_request(f"example-{uuid.uuid4().hex[:12]}", merchant, 2_000_000, "CNY",
                                    term_months=12, product=pb.PRODUCT_WORKING_CAPITAL)
        answer = c.authorize(request)  # default deadline 5 s, retried on UNAVAILABLE/RESOURCE_EXHAUSTED
        print(pb.Decision.Name(answer.decision), answer.approved_limit.amount_minor,
              answer.approved_limit.currency, [r.code for r in answer.reasons])

        bad = authorize_request(f"example-{uuid.uuid4().hex[:12]}", merchant, 2_000_000, "XXX")
        try:
            c.authorize(bad)
        except grpc.RpcError as err:
            details = error_details(err)  # never retried: INVALID_ARGUMENT
            print(details.code.name, details.reason, [v.field for v in details.field_violations])
            return 0
    print("expected INVALID_ARGUMENT for currency XXX", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
