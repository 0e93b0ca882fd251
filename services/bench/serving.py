"""``creditauth bench serving``: the ceiling, the full path and the naive stack, side by side.

Every target runs in its own process group pinned to one core, the load
generator (``python -m loadtest quick``) in another process pinned to the other
core, one target after the other in the same run, with the same load: unary
calls at 64 in flight, batch RPCs of 100 at 8 in flight, and two streams.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class Target:
    name: str
    argv: list[str]
    scale: float = 1.0  # share of the load to send (the naive stack is slow)
    tls_ca: Path | None = None  # the target serves TLS under this CA (the load checks it)


def _client_channel(port: int, tls_ca: Path | None) -> grpc.Channel:
    if tls_ca is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}")
    creds = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])


def tls_config(directory: Path) -> tuple[Path, Path]:
    """A throw-away CA and server certificate, and a settings file serving TLS with them to
    anonymous callers: ``(settings.yaml, ca.crt)``."""
    import yaml

    from services.auth.pki import Authority

    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority("creditauth bench CA")
    cert, key = ca.issue("frontend.bench", server=True).write(directory, "server")
    (directory / "ca.crt").write_bytes(ca.pem)
    doc = {"security": {"tls": {"cert_file": str(cert), "key_file": str(key)}, "anonymous": {"name": "bench"}}}
    (directory / "settings.yaml").write_text(yaml.safe_dump(doc))
    return directory / "settings.yaml", directory / "ca.crt"


def _pinned(argv: list[str], cpus: list[int]) -> list[str]:
    """``argv`` run on ``cpus`` (children inherit it) where ``taskset`` exists."""
    taskset = shutil.which("taskset")
    if taskset is None or len(os.sched_getaffinity(0)) < 2:
        return argv
    return [taskset, "-c", ",".join(map(str, cpus)), *argv]


def _cores() -> tuple[list[int], list[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus, cpus
    return cpus[:1], cpus[1:2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(port: int, proc: subprocess.Popen[bytes], tls_ca: Path | None, timeout_s: float = 180) -> None:
    from creditauth.v1 import authorization_pb2 as pb
    from creditauth.v1 import authorization_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout_s
    # A fresh id each time: a data dir's idempotency store remembers an earlier run's probe,
    # and the same id with other fields is refused (ALREADY_EXISTS) for its whole window.
    req = pb.AuthorizeRequest(application_id=f"ready-{uuid.uuid4().hex[:12]}", merchant_id="M00000001", term_months=6,
                              product=pb.PRODUCT_WORKING_CAPITAL, channel=pb.CHANNEL_WEB)
    req.requested_amount.amount_minor = 100_00
    req.requested_amount.currency = "CNY"
    with _client_channel(port, tls_ca) as ch:
        stub = pb_grpc.CreditAuthorizationStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"target exited with {proc.returncode} before it was ready")
            try:
                stub.Authorize(req, timeout=5)
                return
            except grpc.RpcError:
                time.sleep(1.0)
    raise TimeoutError(f"target on port {port} not ready after {timeout_s} s")


def _run_target(t: Target, port: int, args: argparse.Namespace) -> dict[str, Any]:
    server_cpus, load_cpus = _cores()
    log_path = Path(args.log_dir) / f"{t.name.split()[0]}-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        _pinned(t.argv, server_cpus),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            _wait_ready(port, proc, t.tls_ca)
        except (RuntimeError, TimeoutError) as exc:
            tail = log_path.read_bytes()[-3000:].decode(errors="replace")
            raise RuntimeError(f"{t.name}: {exc}; its log ({log_path}) ends with:\n{tail}") from exc
        load = [
            sys.executable, "-m", "loadtest", "quick",
            "--target", f"127.0.0.1:{port}",
            "--data-dir", str(args.data_dir),
            "--requests", str(max(200, int(args.unary * t.scale))),
            "--concurrency", "64",
            "--batch-calls", str(max(10, int(args.batch_calls * t.scale))),
            "--stream-requests", str(int(args.stream * t.scale) if t.name != "naive stack" else 0),
        ]
        if t.tls_ca is not None:
            load += ["--tls-ca", str(t.tls_ca)]
        out = subprocess.run(
            load, capture_output=True, text=True, timeout=1800,
            preexec_fn=lambda: os.sched_setaffinity(0, load_cpus),
        )
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed on {t.name}: {out.stderr[-1500:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result
    finally:
        _stop(proc)
        log_file.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a target and wait until every process of its group is gone: Ray's processes
    outlive the front end by seconds, and their exit work would land on the next target."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2.0)  # let the core settle (page cache, socket teardown) before the next target


def targets(args: argparse.Namespace) -> list[tuple[Target, int]]:
    exe = [sys.executable, "-m", "services.cli.main"]
    common = ["--data-dir", str(args.data_dir)]
    if getattr(args, "online_store", None):
        common += ["--online-store", args.online_store]
    out = []
    port = _free_port()
    out.append((Target("ceiling (echo)", [*exe, "baseline", "echo", "--port", str(port)]), port))
    for channel in args.channels:
        port = _free_port()
        out.append(
            (
                Target(
                    f"creditauth ({channel})",
                    [*exe, "serve", *common, "--port", str(port), "--channel", channel, "--plaintext"],
                ),
                port,
            )
        )
    if getattr(args, "tls_cost", False):
        config, ca = tls_config(Path(args.log_dir) / "tls")
        for channel in args.channels:
            port = _free_port()
            argv = [*exe, "serve", *common, "--config", str(config), "--port", str(port), "--channel", channel]
            out.append((Target(f"creditauth ({channel}, TLS)", argv, tls_ca=ca), port))
    if args.telemetry_cost:
        port = _free_port()
        out.append(
            (
                Target(
                    "creditauth (direct, telemetry off)",
                    [*exe, "serve", *common, "--port", str(port), "--channel", "direct", "--no-telemetry",
                     "--plaintext"],
                ),
                port,
            )
        )
    if not args.skip_naive:
        port = _free_port()
        out.append((Target("naive stack", [*exe, "baseline", "naive", *common, "--port", str(port)], 0.05), port))
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every target once per round, rounds interleaved (A B C A B C ...), so slow
    drift on a shared machine hits every target alike; the median round counts."""
    per_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order: list[tuple[str, str]] = []
    rounds = max(1, getattr(args, "rounds", 1))
    for rnd in range(rounds):
        for t, port in targets(args):
            print(f"-- {t.name}" + (f" (round {rnd + 1}/{rounds})" if rounds > 1 else "") + " ...", flush=True)
            result = _run_target(t, port, args)
            for r in result["runs"]:
                if r["decisions"] == 0:
                    continue
                key = (t.name, r["mode"])
                if key not in per_key:
                    order.append(key)
                per_key.setdefault(key, []).append({"target": t.name, **r})
                lat = r["latency_ms"]
                print(
                    f"   {r['mode']:<9} {r['decisions_per_s']:>10,.0f} decisions/s  "
                    f"p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  p99.9 {lat['p99.9']:.2f} ms  errors {r['errors']}",
                    flush=True,
                )
    rows = []
    for key in order:
        runs = sorted(per_key[key], key=lambda r: r["decisions_per_s"])
        median = dict(runs[(len(runs) - 1) // 2])
        median["rounds"] = [round(r["decisions_per_s"]) for r in per_key[key]]
        rows.append(median)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    ceiling = {r["mode"]: r["decisions_per_s"] for r in rows if r["target"].startswith("ceiling")}
    naive = {r["mode"]: r["decisions_per_s"] for r in rows if r["target"] == "naive stack"}
    multi = any(len(r.get("rounds", [])) > 1 for r in rows)
    head = "| target | mode | decisions/s | p50 ms | p99 ms | p99.9 ms | vs ceiling | vs naive |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    lines = [head + (" every round |" if multi else ""), rule + (" --- |" if multi else "")]
    for r in rows:
        lat = r["latency_ms"]
        c = ceiling.get(r["mode"])
        n = naive.get(r["mode"])
        line = (
            f"| {r['target']} | {r['mode']} | {r['decisions_per_s']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} "
            f"| {lat['p99.9']:.2f} | " + (f"{r['decisions_per_s'] / c:.2f}x | " if c else "- | ")
            + (f"{r['decisions_per_s'] / n:.0f}x |" if c and n else "- |")
        )
        if multi:
            line += " " + " / ".join(f"{x:,}" for x in r.get("rounds", [])) + " |"
        lines.append(line)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    if not (Path(args.data_dir) / "models" / "LATEST").exists():
        raise SystemExit(f"no trained world under {args.data_dir}: run `creditauth demo` (or the data steps) first")
    rows = run(args)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
