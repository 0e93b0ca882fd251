"""A caller's W3C trace continues through a real front end: its ``traceparent`` metadata makes
the RPC's span a child of the caller's, even with local sampling off; a malformed one is ignored."""

from __future__ import annotations

import grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.settings import TelemetrySettings
from services.telemetry import Telemetry
from tests.conftest import World
from tests.e2e import api_checks as c
from tests.e2e.conftest import start_local

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE}-00f067aa0ba902b7-01"


def test_the_callers_trace_goes_on_through_the_front_end(world: World) -> None:
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetrySettings(trace_sample_ratio=0.0), "test", [SimpleSpanProcessor(exporter)])
    # The replica side shares the test's telemetry so its spans land in the same exporter.
    lt, fe = start_local(world, telemetry=tel)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            stub.Authorize(c.request(1, "M00000001"), timeout=30, metadata=[("traceparent", CALLER)])
            stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=[c.request(i) for i in range(3)]), timeout=30,
                                metadata=[("traceparent", CALLER)])
            stub.Authorize(c.request(2, "M00000002"), timeout=30, metadata=[("traceparent", "00-bad-01")])
            stub.Authorize(c.request(3, "M00000003"), timeout=30)
        spans = exporter.get_finished_spans()
        rpcs = [s for s in spans if s.name in ("Authorize", "AuthorizeBatch")]
        assert sorted(s.name for s in rpcs) == ["Authorize", "AuthorizeBatch"], "only the caller's traced calls"
        for s in rpcs:
            assert f"{s.context.trace_id:032x}" == TRACE
            assert s.parent is not None and f"{s.parent.span_id:016x}" == "00f067aa0ba902b7"
        scored = [s for s in spans if s.name == "score_batch"]
        assert scored and all(f"{s.context.trace_id:032x}" == TRACE or s.links for s in scored)
    finally:
        lt.run(fe.stop())
        lt.close()
        tel.shutdown()
