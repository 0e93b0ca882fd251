"""``creditauth log show|export|compact``: the decision log, read back and compacted.

``show`` and ``export`` read the Parquet layout (and the chunks a live writer has not
rolled yet) with polars. ``show`` is given an application id in the clear and looks for
its keyed hash (the log never holds the id itself), so it needs the log's key.
``show`` also finds items the front end refused (``refusals``, a sibling table).
``compact`` turns the NATS stream (``decision_log.sink: nats``) into that same layout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from creditauth.v1 import authorization_pb2 as pb
from services.schema.codes import name as status_name
from services.schema.currency import CURRENCIES
from services.settings import Settings

if TYPE_CHECKING:
    from services.decisionlog.compactor import Compactor, CompactStats

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

log = logging.getLogger(__name__)
RESTART_S = 2.0  # a compactor that lost NATS starts again after this

_EXPONENT = {c.code: c.exponent for c in CURRENCIES}


def _when(s: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time (YYYY-MM-DD[THH:MM[:SS]]): {s!r}") from exc
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def add_log(sub: _Subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    lg = sub.add_parser("log", help="the decision log: look decisions up, export them, compact the NATS stream")
    lg_sub = lg.add_subparsers(dest="cmd", required=True)
    show = lg_sub.add_parser("show", help="every logged decision for an application id: what, why, which versions")
    common(show)
    show.add_argument("application_id", help="the application id as the caller sent it")
    show.add_argument("--caller", help="only this caller's (ids are scoped by caller)")
    show.add_argument("--json", action="store_true", help="one JSON object per logged row instead of text")
    show.set_defaults(run=log_show)
    exp = lg_sub.add_parser("export", help="decisions logged in [--from, --to) to one Parquet or CSV file")
    common(exp)
    exp.add_argument("--from", dest="start", type=_when, required=True, help="first instant (UTC unless given)")
    exp.add_argument("--to", dest="end", type=_when, required=True, help="end instant, excluded")
    exp.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="output format (default parquet)")
    exp.add_argument("--out", required=True, help="output file")
    exp.add_argument("--refusals", action="store_true",
                     help="export the items the front end refused (the refusals table) instead of the decisions")
    exp.set_defaults(run=log_export)
    cp = lg_sub.add_parser(
        "compact", help="the NATS decision stream into the Parquet layout (a durable consumer; until SIGTERM)"
    )
    common(cp)
    cp.add_argument("--nats-url", help="NATS servers, comma-separated (default: decision_log.nats_url)")
    cp.add_argument("--stream", help="the stream to read (default: decision_log.nats_stream)")
    cp.add_argument("--durable", default="compactor", help="the durable consumer's name (default compactor)")
    cp.add_argument("--out", type=Path,
                    help="Parquet layout root (default: decision_log.directory, <data-dir>/decisions)")
    cp.add_argument("--roll-bytes", type=int,
                    help="bytes of rows held before files are written (default: decision_log.roll_bytes)")
    cp.add_argument("--roll-interval", type=float,
                    help="seconds before held rows are written (default: decision_log.roll_interval_s)")
    cp.add_argument("--until-idle", action="store_true", help="stop once nothing is left to read")
    cp.set_defaults(run=log_compact)


def log_show(settings: Settings, args: argparse.Namespace) -> None:
    from services.decisionlog.privacy import IdHasher, search_keys
    from services.decisionlog.reader import lookup

    cfg = settings.decision_log
    hashers = [IdHasher(k) for k in search_keys(cfg, settings.data_dir)]  # the current key, then older ones
    rows = lookup(cfg.root(settings.data_dir), hashers, args.application_id, args.caller).to_dicts()
    if not rows:
        print(f"no decision logged for application {args.application_id}", file=sys.stderr)
        raise SystemExit(1)
    for r in rows:
        print(json.dumps(_plain(r), default=str) if args.json else _describe(args.application_id, r))


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    """A row for JSON: keys as hex, enums by name, inputs left out (export has them)."""
    out = {k: v for k, v in r.items() if not k.startswith(("f_", "view_ts_")) and k != "tag_words"}
    for k in ("application_key", "merchant_key"):
        out[k] = r[k].hex() if r.get(k) is not None else None
    out["status"] = status_name(r["status"])
    # A front-end refusal (refusals table) has no decision.
    decision = r.get("decision")
    out["decision"] = pb.Decision.Name(decision).removeprefix("DECISION_") if decision is not None else None
    return out


def _money(minor: int, code: str) -> str:
    exp = _EXPONENT.get(code, 2)
    return f"{minor / 10**exp:,.{exp}f} {code}"


def _describe(application_id: str, r: dict[str, Any]) -> str:
    caller = f" (caller {r['caller']})" if r["caller"] else ""
    head = (
        f"application {application_id}{caller}: logged {r['logged_at']:%Y-%m-%d %H:%M:%S.%f} UTC by "
        f"{r['replica_id']} (batch {r['batch_seq']}, row {r['row']})"
    )
    if r.get("refused_by") == "frontend":
        field = f"{r['error_field']}: " if r.get("error_field") else ""
        return (f"{head}\n  refused by the front end ({r['rpc']}): {status_name(r['status'])}  "
                f"{field}{r.get('error_message') or ''}")
    if r["status"] != 0:
        return f"{head}\n  refused: {status_name(r['status'])}"
    replay = "  replay of the decision made earlier (not a second decision)\n" if r["replay"] else ""
    reasons = ", ".join(f"{c} ({v:+.3f})" for c, v in zip(r["reasons"], r["reason_contrib"], strict=True))
    return (
        f"{head}\n{replay}"
        f"  decision {pb.Decision.Name(r['decision']).removeprefix('DECISION_')}  id {r['decision_id']}\n"
        f"  asked {_money(r['amount_minor'], r['currency'])} over {r['term_months']} months; "
        f"limit {_money(r['approved_minor'], r['limit_currency'])}, APR {r['apr_bps']} bps, "
        f"grade {r['risk_grade'] or '-'}, PD {r['pd']:.6f}\n"
        f"  reasons: {reasons or '-'}\n"
        f"  model {r['model_version']}, policy {r['policy_version']}; feature age {r['feature_age_s']:.0f} s, "
        f"stale {'yes' if r['stale'] else 'no'}, degraded {'yes' if r['degraded'] else 'no'}"
    )


def log_export(settings: Settings, args: argparse.Namespace) -> None:
    from services.decisionlog.reader import export
    from services.decisionlog.refusals import refusals_root

    if args.end <= args.start:
        raise SystemExit("creditauth: error: --to must be after --from")
    root = settings.decision_log.root(settings.data_dir)
    what = "front-end refusals" if args.refusals else "logged decisions"
    if args.refusals:  # a table of its own (no decision, no inputs): exported on its own
        root = refusals_root(root)
    n = export(root, args.start, args.end, Path(args.out), args.format)
    print(f"exported {n:,} {what} ({args.start:%Y-%m-%d %H:%M} to {args.end:%Y-%m-%d %H:%M}) to {args.out}")


def log_compact(settings: Settings, args: argparse.Namespace) -> None:
    import asyncio

    from services.decisionlog.compactor import Compactor
    from services.decisionlog.sinks.nats import NatsOptions

    cfg = settings.decision_log
    over: dict[str, Any] = {}
    if args.nats_url:
        over["servers"] = tuple(u.strip() for u in args.nats_url.split(",") if u.strip())
    if args.stream:
        over["stream"] = args.stream
    opts = NatsOptions.from_settings(cfg, **over)
    out = args.out if args.out is not None else cfg.root(settings.data_dir)

    def make() -> Compactor:
        return Compactor(
            opts, out, durable=args.durable, fsync=cfg.fsync,
            roll_bytes=args.roll_bytes or cfg.roll_bytes, roll_interval_s=args.roll_interval or cfg.roll_interval_s,
        )

    st = asyncio.run(_compact(make, args.until_idle))
    print(f"compacted {st.messages:,} messages from {opts.stream}: {st.rows:,} decisions in {st.files:,} files "
          f"under {out}; {st.duplicate_rows:,} duplicate rows dropped, {st.rejected:,} messages rejected")


async def _compact(make: Callable[[], Compactor], until_idle: bool) -> CompactStats:
    """Run compactors until SIGTERM/SIGINT; one that loses NATS is replaced by a new one
    (it starts from its files and the consumer's acknowledgement floor, as after a crash)."""
    import asyncio
    import signal

    import nats.errors

    from services.decisionlog.compactor import CompactStats
    from services.errors import StoreUnavailable

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    total = CompactStats()
    while True:
        c = make()
        try:
            await c.run(stop, until_idle=until_idle)
            failure = None
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            failure = exc
        for k, v in vars(c.stats).items():
            setattr(total, k, getattr(total, k) + v)
        if failure is None:
            return total
        if until_idle:
            raise StoreUnavailable(f"decision log compactor: {failure!r}") from failure
        log.warning("decision log compactor: %r; starting again in %.0f s", failure, RESTART_S)
        try:
            await asyncio.wait_for(stop.wait(), RESTART_S)
            return total
        except asyncio.TimeoutError:
            continue
