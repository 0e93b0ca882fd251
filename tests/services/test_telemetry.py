"""Telemetry: metrics on the Prometheus endpoint, one trace from the front end into the replica."""

from __future__ import annotations

import contextlib
import urllib.request

import grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.settings import TelemetrySettings
from services.telemetry import NullTelemetry, Telemetry
from tests.conftest import World
from tests.e2e import api_checks as c
from tests.e2e.conftest import start_local
from tests.support import free_port


def test_metrics_and_a_trace_across_the_hop(world: World) -> None:
    exporter = InMemorySpanExporter()
    port = free_port()
    tel = Telemetry(
        TelemetrySettings(prometheus_port=port, trace_sample_ratio=1.0), "test", [SimpleSpanProcessor(exporter)]
    )
    # The replica side shares the test's telemetry so its spans land in the same exporter.
    lt, fe = start_local(world, telemetry=tel)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            for i in range(5):
                stub.Authorize(c.request(i, f"M{i:08d}"), timeout=30)
            stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=[c.request(i) for i in range(20)]), timeout=30)
            with contextlib.suppress(grpc.RpcError):
                stub.Authorize(c.request(1, currency="BAD"), timeout=30)
        # Everything above was recorded before its answer was sent: one scrape sees it all.
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        lines = body.splitlines()

        def series(name: str, *labels: str) -> list[str]:
            return [ln for ln in lines if ln.startswith(name + "{") and all(lb in ln for lb in labels)]

        ok = series("creditauth_rpcs_total", 'rpc_method="Authorize"', 'rpc_grpc_status_code="0"')
        assert ok and float(ok[0].rsplit(" ", 1)[1]) == 5.0
        assert series("creditauth_rpcs_total", 'rpc_grpc_status_code="3"')  # INVALID_ARGUMENT
        decided = series("creditauth_decisions_total")
        assert sum(float(ln.rsplit(" ", 1)[1]) for ln in decided) == 25.0
        for stage in ("feature_read", "kernel", "policy"):
            assert series("creditauth_stage_duration_seconds_count", f'stage="{stage}"')
        assert series("creditauth_batch_size_count") and series("creditauth_queue_depth")
        # Latencies are a 1-in-4 sample of OK RPCs (5 calls -> 1 recorded); errors always.
        # OpenTelemetry's RPC semantic conventions: rpc.server.call.duration, rpc.* attributes.
        semconv = ('rpc_system="grpc"', 'rpc_service="creditauth.v1.CreditAuthorization"', 'rpc_method="Authorize"')
        timed = series("rpc_server_call_duration_seconds_count", *semconv, 'rpc_grpc_status_code="0"')
        assert timed and float(timed[0].rsplit(" ", 1)[1]) == 1.0
        failed = series("rpc_server_call_duration_seconds_count", 'rpc_grpc_status_code="3"')
        assert failed and float(failed[0].rsplit(" ", 1)[1]) == 1.0

        spans = exporter.get_finished_spans()
        fronts = [s for s in spans if s.name == "Authorize"]
        batches = [s for s in spans if s.name == "score_batch"]
        assert fronts and batches
        front_ids = {s.context.span_id for s in fronts}
        linked = {link.context.span_id for b in batches for link in b.links}
        assert front_ids & linked  # the replica's span points back at the RPC's span
        # Each stage of a traced batch is a child span of its score_batch, inside its time.
        by_id = {b.context.span_id: b for b in batches}
        stages = [s for s in spans if s.parent is not None and s.parent.span_id in by_id]
        expected = {"idempotency_lookup", "feature_read", "kernel", "policy", "idempotency_save"}
        assert expected <= {s.name for s in stages}
        for st in stages:
            parent = by_id[st.parent.span_id]  # type: ignore[union-attr]
            assert st.context.trace_id == parent.context.trace_id
            assert parent.start_time <= st.start_time <= st.end_time <= parent.end_time  # type: ignore[operator]
    finally:
        lt.run(fe.stop())
        lt.close()
        tel.shutdown()


def test_null_telemetry_is_inert() -> None:
    t = NullTelemetry()
    assert not t.sampled()
    with t.span("x") as tp:
        assert tp is None
