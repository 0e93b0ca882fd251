"""``creditauth``: the single command-line entry point.

This is the only place that reads environment variables (``CREDITAUTH_CONFIG``)
and the only place that turns exceptions into exit codes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features import FeatureError
from kernels import KernelError
from services import logs, version
from services.bench.logcost import add_parser as add_bench_log
from services.bench.variants import add_parser as add_bench_variants
from services.cli.bundle import add_bundle
from services.cli.client import add_client
from services.cli.controls import add_controls
from services.cli.log import add_log
from services.cli.policy import add_policy
from services.cli.replay import add_replay
from services.cli.settings_doc import add_settings
from services.cli.warnings import add_warnings
from services.errors import CreditAuthError
from services.settings import Settings, load_settings

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {s!r}") from exc


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings")
    g.add_argument("--config", type=Path, help="settings YAML (default: $CREDITAUTH_CONFIG if set)")
    g.add_argument("--data-dir", type=Path, help="where data, feature repo and models live (default .creditauth)")
    g.add_argument("--online-store", choices=["sqlite", "redis"], help="online store (default sqlite)")
    g.add_argument("--redis-url", help="Redis online store URL (default redis://127.0.0.1:6379/0)")




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="creditauth",
        description="Credit-authorization scoring: gRPC front ends -> Ray Serve replicas"
        " -> Feast features -> Cython kernels.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--log-format", choices=["text", "json"],
                        help="process logs as text or JSON lines with trace ids (default: telemetry.log_format)")
    parser.add_argument("--version", action="version", version=f"creditauth {version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    # The order here is the order `creditauth --help` lists the commands in.
    _add_data(sub)
    _add_features(sub)
    _add_model(sub)
    _add_serve(sub)
    _add_frontend(sub)
    _add_baseline(sub)
    _add_bench(sub)
    _add_loadtest(sub)
    add_client(sub)
    add_log(sub, _common)
    add_controls(sub, _common)
    add_warnings(sub, _common)
    add_replay(sub, _common)
    add_policy(sub, _common)
    add_bundle(sub, _common)
    add_settings(sub)
    _add_demo(sub)
    return parser


def _add_data(sub: _Subparsers) -> None:
    data = sub.add_parser("data", help="synthetic population").add_subparsers(dest="cmd", required=True)
    gen = data.add_parser("generate", help="generate merchants, flows, bureau and applications; build offline tables")
    _common(gen)
    gen.add_argument("--merchants", type=int, default=100_000, help="population size (default 100000)")
    gen.add_argument("--seed", type=int, default=7,
                     help="random seed; the same seed, size and date give the same population (default 7)")
    gen.add_argument("--as-of", type=_date, default=None, help="snapshot date (default: today, UTC)")


def _add_features(sub: _Subparsers) -> None:
    feats = sub.add_parser("features", help="Feast feature repository").add_subparsers(dest="cmd", required=True)
    ap = feats.add_parser("apply", help="write the feature repo and register it in Feast")
    _common(ap)
    mat = feats.add_parser("materialize", help="load the offline tables into the online store")
    _common(mat)
    mat.add_argument(
        "--engine",
        choices=["bulk", "feast"],
        default="bulk",
        help="bulk: our writer of Feast's layout (default); feast: `feast materialize`",
    )


def _add_model(sub: _Subparsers) -> None:
    model = sub.add_parser("model", help="risk model").add_subparsers(dest="cmd", required=True)
    tr = model.add_parser("train", help="train LightGBM, gate on kernel parity, write a versioned artifact")
    _common(tr)
    tr.add_argument("--rounds", type=int, default=400, help="maximum boosting rounds (early stopping applies)")


def _add_serve(sub: _Subparsers) -> None:
    serve = sub.add_parser("serve", help="start Ray, the scoring replicas and the gRPC front end")
    _common(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 50051)")
    serve.add_argument("--replicas", type=int, help="scoring replicas (default 1)")
    serve.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    serve.add_argument("--policy", type=Path, help="policy YAML (default: the packaged policy)")
    serve.add_argument(
        "--channel", choices=["direct", "handle", "local"],
        help="how front ends reach replicas (default direct; local: no Ray, score in process)",
    )
    serve.add_argument("--frontends", type=int, help="front-end processes sharing the port (default 1)")
    serve.add_argument("--no-telemetry", action="store_true", help="disable traces and metrics")
    serve.add_argument("--prometheus-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    serve.add_argument(
        "--plaintext", action="store_true",
        help="listen without TLS and let unidentified callers in as 'anonymous' (local use only: it warns)",
    )


def _add_frontend(sub: _Subparsers) -> None:
    fe = sub.add_parser("frontend", help="run gRPC front ends only, joining a running cluster's replicas")
    _common(fe)
    fe.add_argument("--host", help="listen address (default 127.0.0.1)")
    fe.add_argument("--port", type=int, help="listen port (default 50051)")
    fe.add_argument("--ray-address", help="the Ray cluster to join (default: settings ray.address)")
    fe.add_argument("--channel", choices=["direct", "handle"], help="how to reach replicas (default direct)")
    fe.add_argument(
        "--plaintext", action="store_true",
        help="listen without TLS and let unidentified callers in as 'anonymous' (local use only: it warns)",
    )


def _add_baseline(sub: _Subparsers) -> None:
    base = sub.add_parser("baseline", help="comparison servers on the same proto")
    base_sub = base.add_subparsers(dest="cmd", required=True)
    echo = base_sub.add_parser("echo", help="trivial grpc.aio server (no scoring): the ceiling")
    echo.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    echo.add_argument("--port", type=int, default=50052, help="listen port (default 50052)")
    naive = base_sub.add_parser("naive", help="Ray Serve gRPC proxy -> Feast SDK + LightGBM per request")
    _common(naive)
    naive.add_argument("--port", type=int, default=50053, help="gRPC proxy port, on 127.0.0.1 (default 50053)")


def _add_bench(sub: _Subparsers) -> None:
    bench = sub.add_parser("bench", help="benchmarks (print figures; not tests)")
    bench_sub = bench.add_subparsers(dest="cmd", required=True)
    _add_bench_serving(bench_sub)
    _add_bench_capacity(bench_sub)
    _add_bench_telemetry(bench_sub)
    _add_bench_channels(bench_sub)
    add_bench_variants(bench_sub, _common)
    add_bench_log(bench_sub, _common)


def _add_bench_serving(bench_sub: _Subparsers) -> None:
    bs = bench_sub.add_parser(
        "serving", help="ceiling vs creditauth vs naive stack, same load, one run"
    )
    _common(bs)
    bs.add_argument("--unary", type=int, default=6000, help="unary requests per target")
    bs.add_argument("--batch-calls", type=int, default=400, help="batch RPCs of 100 per target")
    bs.add_argument("--stream", type=int, default=20000, help="stream requests per target")
    bs.add_argument("--channels", type=lambda s: s.split(","), default=["local", "direct", "handle"],
                    help="front end -> replica channels to measure (comma-separated)")
    bs.add_argument("--skip-naive", action="store_true", help="do not start or measure the naive stack")
    bs.add_argument("--tls-cost", action="store_true",
                    help="also run each channel's front end with TLS, to show what TLS costs")
    bs.add_argument("--telemetry-cost", action="store_true",
                    help="also run the direct path with telemetry off, to show what telemetry costs")
    bs.add_argument("--rounds", type=int, default=1,
                    help="run every target this many times, interleaved; report each target's median round")
    bs.add_argument("--json", help="also write the rows as JSON here")
    bs.add_argument("--log-dir", default="/tmp/creditauth-bench", help="where each target's output goes")


def _add_bench_capacity(bench_sub: _Subparsers) -> None:
    bc = bench_sub.add_parser("capacity", help="CPU per decision per tier (front end, replica, Ray), for the plan")
    _common(bc)
    bc.add_argument("--unary", type=int, default=6000, help="unary requests per measurement")
    bc.add_argument("--batch-calls", type=int, default=600, help="batch RPCs of 100 per measurement")
    bc.add_argument("--json", help="also write the rows as JSON here")
    bc.add_argument("--log-dir", default="/tmp/creditauth-bench", help="where each stack's output goes")


def _add_bench_telemetry(bench_sub: _Subparsers) -> None:
    bt = bench_sub.add_parser("telemetry", help="telemetry's cost per RPC and per backend call, on vs off, in process")
    _common(bt)
    bt.add_argument("--calls", type=int, default=200_000, help="calls per round")
    bt.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best one counts (default 3)")


def _add_bench_channels(bench_sub: _Subparsers) -> None:
    bch = bench_sub.add_parser(
        "channels", help="front end -> replica channels (Ray actor call, Compiled Graph, direct), one batch per call"
    )
    _common(bch)
    bch.add_argument("--calls", type=int, default=1000, help="serial calls per channel, size and round")
    bch.add_argument("--rounds", type=int, default=3,
                     help="interleaved rounds; each channel's median round is reported (default 3)")
    bch.add_argument("--sizes", default="1,100", help="batch sizes (comma-separated)")
    bch.add_argument("--json", help="also write every round's figures as JSON here")


def _add_loadtest(sub: _Subparsers) -> None:
    lt = sub.add_parser("loadtest", help="load-test campaigns (see docs/loadtest.md)", add_help=False)
    lt.add_argument("args", nargs=argparse.REMAINDER, help="passed to `python -m loadtest`")


def _add_demo(sub: _Subparsers) -> None:
    demo = sub.add_parser("demo", help="everything end to end on the embedded defaults, then a short load run")
    _common(demo)
    demo.add_argument("--merchants", type=int, default=100_000, help="population size (default 100000)")
    demo.add_argument("--requests", type=int, default=4000, help="unary requests to send (plus batch and stream)")
    demo.add_argument("--concurrency", type=int, default=64, help="unary requests in flight (default 64)")
    demo.add_argument("--port", type=int, default=0, help="gRPC port (default: any free port)")
    demo.add_argument("--reuse-data", action="store_true", help="skip generation/materialization/training if present")


def settings_from(args: argparse.Namespace) -> Settings:
    path = args.config
    if path is None and os.environ.get("CREDITAUTH_CONFIG"):
        path = Path(os.environ["CREDITAUTH_CONFIG"])
    over: dict[str, Any] = {"features": {}, "serving": {}, "ray": {}}
    if getattr(args, "data_dir", None):
        over["features"]["data_dir"] = args.data_dir
    if getattr(args, "online_store", None):
        over["features"]["online_store"] = args.online_store
    if getattr(args, "redis_url", None):
        over["features"]["redis_url"] = args.redis_url
    for key in ("host", "port", "channel", "frontends"):
        if getattr(args, key, None) is not None:
            over["serving"][key] = getattr(args, key)
    if getattr(args, "replicas", None) is not None:
        over["ray"]["replicas"] = args.replicas
    if getattr(args, "ray_address", None):
        over["ray"]["address"] = args.ray_address
    if getattr(args, "policy", None):
        over["policy_path"] = args.policy
    if getattr(args, "plaintext", False):
        over["security"] = {"plaintext": True, "anonymous": {"name": "anonymous"}}
    over["telemetry"] = _telemetry_overrides(args)
    return load_settings(path, over)


def _telemetry_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if getattr(args, "no_telemetry", False):
        over["enabled"] = False
    if getattr(args, "prometheus_port", None) is not None:
        over["prometheus_port"] = args.prometheus_port
    return over


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:
        # The load generator is its own program that reaches the system only over
        # gRPC: hand it the rest of the command line, unparsed.
        os.execv(sys.executable, [sys.executable, "-m", "loadtest", *argv[1:]])
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logs.configure(level, args.log_format or "text")
    from services.cli import commands

    try:
        if args.group == "baseline" and args.cmd == "echo":
            # The ceiling server takes no settings at all.
            from services.cli.commands import baseline_echo

            baseline_echo(args)
            return
        # Client commands (services/cli/client.py) talk to a server and take no settings.
        settings = None if getattr(args, "no_settings", False) else settings_from(args)
        if settings is not None and args.log_format is None:
            logs.configure(level, settings.telemetry.log_format)
        # A command module of its own sets ``run`` (services/cli/log.py); the rest live in commands.
        name = f"{args.group}_{getattr(args, 'cmd', '')}".rstrip("_")
        handler = getattr(args, "run", None) or getattr(commands, name)
        handler(settings, args)
    except (CreditAuthError, FeatureError, KernelError) as exc:
        print(f"creditauth: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
