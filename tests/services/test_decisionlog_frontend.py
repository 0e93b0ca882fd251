"""Items refused by the front end are on record; no identifier reaches process logs, traces or metrics.

One real front end (plaintext on loopback, an anonymous caller granted one product up to an
amount, a queue bound of 4 decisions) over the real engine, with the decision log on in a
temporary directory and telemetry recording every span. Each refusal kind the front end makes
(malformed, invalid, not granted, unauthenticated, overloaded) is sent over a real channel
beside real decisions; the front end is then stopped gracefully, and the log is read back.
"""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pytest
import yaml
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.cli.main import main
from services.decisionlog.privacy import IdHasher, load_key
from services.decisionlog.reader import scan
from services.decisionlog.refusals import open_refusal_log, refusals_root
from services.frontend import FrontEnd
from services.runtime import LocalBackend
from services.schema.codes import Code
from services.scoring.factory import build_engine
from services.settings import Settings, TelemetrySettings, load_settings
from services.telemetry import Telemetry
from tests.conftest import World, feature_settings
from tests.e2e import api_checks as c
from tests.e2e.conftest import LoopThread
from tests.support import free_port

pytestmark = pytest.mark.e2e
MAX_QUEUE = 4  # a batch call of more valid items is shed (RESOURCE_EXHAUSTED)
ANON = {"name": "anonymous", "products": ["WORKING_CAPITAL"], "max_amount_minor": {"CNY": 5_000_000}}




def _settings(world: World, tmp: Path) -> Settings:
    key = tmp / "id.key"
    key.write_bytes(uuid.uuid4().hex.encode() * 2)
    return load_settings(None, {
        "features": feature_settings(world).model_dump(),
        "serving": {"host": "127.0.0.1", "port": 0, "max_queue": MAX_QUEUE},
        "security": {"plaintext": True, "anonymous": ANON},
        "decision_log": {"directory": str(tmp / "decisions"), "spool_directory": str(tmp / "spool"),
                         "id_key_file": str(key), "flush_interval_s": 0.05},
    })


class _Capture(logging.Handler):
    """Every log record of the process, formatted as a handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(f"{record.name} {record.getMessage()} {record.exc_text or ''} {record.args!r}")


@dataclass
class Run:
    settings: Settings
    config: Path
    refused: dict[str, tuple[Code, str]] = field(default_factory=dict)  # app id -> (status, rpc)
    decided: list[str] = field(default_factory=list)
    merchants: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    spans: list[str] = field(default_factory=list)
    metrics: str = ""
    unlogged: int = -1

    @property
    def ids(self) -> list[str]:
        return [*self.refused, *self.decided, *self.merchants]


def _refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    code: grpc.StatusCode = err.value.code()
    return code


def _traffic(ch: grpc.Channel, run: Run) -> None:
    stub = pb_grpc.CreditAuthorizationStub(ch)
    m = run.merchants
    # Decisions, so the identifiers are also on the answered path.
    for i in range(3):
        req = c.request(i, m[i])
        stub.Authorize(req, timeout=30)
        run.decided.append(req.application_id)
    ok = [c.request(i, m[i]) for i in range(3)]
    bad_item = c.request(0, m[3], currency="BAD")
    denied_item = c.request(0, m[4], product=pb.PRODUCT_INVENTORY)
    resp = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=[*ok, bad_item, denied_item]), timeout=30)
    assert [r.HasField("error") for r in resp.responses] == [False, False, False, True, True]
    run.decided += [r.application_id for r in ok]
    run.refused[bad_item.application_id] = (Code.INVALID_ARGUMENT, "AuthorizeBatch")
    run.refused[denied_item.application_id] = (Code.PERMISSION_DENIED, "AuthorizeBatch")

    invalid = c.request(0, m[5], currency="BAD")
    assert _refused(lambda: stub.Authorize(invalid, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    run.refused[invalid.application_id] = (Code.INVALID_ARGUMENT, "Authorize")
    denied = c.request(0, m[6], amount=9_000_000)
    assert _refused(lambda: stub.Authorize(denied, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    run.refused[denied.application_id] = (Code.PERMISSION_DENIED, "Authorize")

    streamed = [c.request(0, m[7], product=pb.PRODUCT_EQUIPMENT), c.request(1, m[8])]
    answers = list(stub.AuthorizeStream(iter(streamed), timeout=30))
    assert answers[0].error.code == Code.PERMISSION_DENIED and not answers[1].HasField("error")
    run.refused[streamed[0].application_id] = (Code.PERMISSION_DENIED, "AuthorizeStream")
    run.decided.append(streamed[1].application_id)
    # A malformed item after a valid one is refused itself (not answered with its neighbour's decision).
    valid = c.request(0, m[8])
    raw_stream = ch.stream_stream("/creditauth.v1.CreditAuthorization/AuthorizeStream", None, None)
    out = [pb.AuthorizeResponse.FromString(b) for b in raw_stream(iter([valid.SerializeToString(), b"\xff\xff"]),
                                                                   timeout=30)]
    assert len(out) == 2 and out[0].application_id == valid.application_id and not out[0].HasField("error")
    assert out[1].error.code == Code.INVALID_ARGUMENT and out[1].application_id == ""
    run.decided.append(valid.application_id)

    shed = [c.request(i, m[9]) for i in range(MAX_QUEUE + 1)]
    call = lambda: stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=shed), timeout=30)  # noqa: E731
    assert _refused(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    for r in shed:
        run.refused[r.application_id] = (Code.RESOURCE_EXHAUSTED, "AuthorizeBatch")

    token = [("authorization", "Bearer not-a-token")]
    unauth = c.request(0, m[10])
    assert _refused(lambda: stub.Authorize(unauth, timeout=30, metadata=token)) == grpc.StatusCode.UNAUTHENTICATED
    raw = ch.unary_unary("/creditauth.v1.CreditAuthorization/Authorize", None, None)
    assert _refused(lambda: raw(b"\xff\xff\xff", timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def run(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("felog")
    settings = _settings(world, tmp)
    config = tmp / "settings.yaml"
    config.write_text(yaml.safe_dump({"decision_log": settings.decision_log.model_dump(mode="json")}))
    r = Run(settings, config, merchants=[f"M{9_000_000 + k:08d}" for k in range(11)])
    exporter = InMemorySpanExporter()
    port = free_port()
    tel = Telemetry(TelemetrySettings(prometheus_port=port, trace_sample_ratio=1.0), "test",
                    [SimpleSpanProcessor(exporter)])
    capture = _Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    lt = LoopThread()
    try:
        refusals = open_refusal_log(settings.decision_log, settings.data_dir)
        assert refusals is not None

        async def up() -> FrontEnd:
            fe = FrontEnd(LocalBackend(build_engine(settings, telemetry=tel)), settings.serving, settings.security,
                          tel, refusals=refusals)
            await fe.start()
            return fe

        fe = lt.run(up())
        with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as ch:
            _traffic(ch, r)
        r.metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        lt.run(fe.stop())  # graceful: the refusal log is closed (flushed, rolled) by it
        r.unlogged = refusals.stats.unlogged_rows
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
        lt.close()
        tel.shutdown()
    r.logs = capture.texts
    for s in exporter.get_finished_spans():
        r.spans.append(json.dumps({"name": s.name, "attrs": dict(s.attributes or {}),
                                   "events": [(e.name, dict(e.attributes or {})) for e in s.events]}, default=str))
    yield r


def _refusals(run: Run) -> pl.DataFrame:
    df = scan(refusals_root(run.settings.decision_log.root(run.settings.data_dir)), journal=False)
    assert df is not None, "no refusal was rolled into Parquet by the graceful stop"
    return df


def test_each_refused_item_is_on_record_once_with_its_status_and_hashed_ids(run: Run) -> None:
    df = _refusals(run)
    cfg = run.settings.decision_log
    hasher = IdHasher(load_key(cfg, run.settings.data_dir, create=False))
    assert run.unlogged == 0
    assert df["replica_id"].str.starts_with("frontend-").all()
    for app, (status, rpc) in run.refused.items():
        rows = df.filter(pl.col("application_key") == pl.lit(hasher.one(app)))
        assert rows.height == 1, f"{app}: {rows.height} rows"
        row = rows.row(0, named=True)
        assert (row["status"], row["rpc"], row["caller"]) == (status, rpc, "anonymous")
        assert row["error_message"]
    # With a record (not granted, shed), the request's fields and the merchant's keyed hash.
    denied = df.filter(pl.col("status") == Code.PERMISSION_DENIED)
    assert denied.height == 3 and denied["merchant_key"].is_not_null().all()
    assert set(denied["merchant_key"].to_list()) == {hasher.one(run.merchants[k]) for k in (4, 6, 7)}
    amounts = dict(zip(denied["rpc"].to_list(), denied["amount_minor"].to_list(), strict=True))
    assert amounts["Authorize"] == 9_000_000 and amounts["AuthorizeBatch"] == 2_000_000
    shed = df.filter(pl.col("status") == Code.RESOURCE_EXHAUSTED)
    assert shed.height == MAX_QUEUE + 1 and set(shed["merchant_key"].to_list()) == {hasher.one(run.merchants[9])}
    assert shed["product"].to_list() == [pb.PRODUCT_WORKING_CAPITAL] * (MAX_QUEUE + 1)
    # Invalid items: the application id where it was decoded, no record (no merchant, no amount).
    invalid = df.filter(pl.col("status") == Code.INVALID_ARGUMENT)
    assert invalid.height == 4  # the unary, the batch item, the malformed call and stream item
    assert invalid["merchant_key"].is_null().all() and invalid["amount_minor"].is_null().all()
    malformed = invalid.filter(pl.col("application_key").is_null())  # nothing decoded
    assert sorted(malformed["rpc"].to_list()) == ["Authorize", "AuthorizeStream"]
    assert "currency" in " ".join(invalid["error_field"].to_list())
    # Unauthenticated: the call, no caller, no ids.
    unauth = df.filter(pl.col("status") == Code.UNAUTHENTICATED)
    assert unauth.height == 1
    assert unauth.row(0, named=True)["caller"] == "" and unauth["application_key"].is_null().all()
    assert df.height == len(run.refused) + 3


def test_log_show_finds_refused_and_decided_items(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--config", str(run.config)]
    for app, (status, rpc) in run.refused.items():
        main(["log", "show", app, *args])
        out = capsys.readouterr().out
        assert f"refused by the front end ({rpc}): {status.name}" in out, out
        main(["log", "show", app, "--json", *args])
        row = json.loads(capsys.readouterr().out)
        assert row["status"] == status.name and row["decision"] is None and app not in json.dumps(row)
    decided = run.decided[0]
    main(["log", "show", decided, *args])
    out = capsys.readouterr().out
    assert "decision " in out and "refused" not in out


def test_no_identifier_in_process_logs_spans_or_metrics(run: Run) -> None:
    assert run.logs, "the capture saw no log record at all"
    assert any(s.startswith('{"name": "Authorize"') for s in run.spans)
    assert any('"score_batch"' in s for s in run.spans)
    assert "creditauth_rpcs_total" in run.metrics
    for where, texts in (("log", run.logs), ("span", run.spans), ("metrics", [run.metrics])):
        for ident in run.ids:
            leaked = [t for t in texts if ident in t]
            assert not leaked, f"{ident} in {where}: {leaked[:2]}"


def test_the_stack_gives_its_front_end_the_log_and_closes_it(world: World, tmp_path: Path) -> None:
    from services.stack import Stack

    settings = _settings(world, tmp_path)
    settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"channel": "local"}),
                                           "telemetry": settings.telemetry.model_copy(update={"enabled": False})})
    lt = LoopThread()
    stack = Stack(settings)
    try:
        lt.run(stack.__aenter__())
        denied = c.request(0, product=pb.PRODUCT_INVENTORY)
        with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as ch:
            stub = pb_grpc.CreditAuthorizationStub(ch)
            assert _refused(lambda: stub.Authorize(denied, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        lt.run(stack.__aexit__(None, None, None))
        lt.close()
    df = scan(refusals_root(settings.decision_log.root(settings.data_dir)), journal=False)
    hasher = IdHasher(load_key(settings.decision_log, settings.data_dir, create=False))
    assert df is not None and df["application_key"].to_list() == [hasher.one(denied.application_id)]
