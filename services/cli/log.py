"""``creditauth log show`` and ``creditauth log export``: the decision log, read back.

Both read the Parquet layout (and the chunks a live writer has not rolled yet) with
polars. ``show`` is given an application id in the clear and looks for its keyed hash
(the log never holds the id itself), so it needs the log's key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from creditauth.v1 import authorization_pb2 as pb
from services.schema.codes import name as status_name
from services.schema.currency import CURRENCIES
from services.settings import Settings

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_EXPONENT = {c.code: c.exponent for c in CURRENCIES}


def _when(s: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date or time (YYYY-MM-DD[THH:MM[:SS]]): {s!r}") from exc
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def add_log(sub: _Subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    lg = sub.add_parser("log", help="the decision log: look decisions up, export them")
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
    exp.set_defaults(run=log_export)


def log_show(settings: Settings, args: argparse.Namespace) -> None:
    from services.decisionlog.privacy import IdHasher, load_key
    from services.decisionlog.reader import lookup

    cfg = settings.decision_log
    hasher = IdHasher(load_key(cfg, settings.data_dir, create=False))
    rows = lookup(cfg.root(settings.data_dir), hasher, args.application_id, args.caller).to_dicts()
    if not rows:
        print(f"no decision logged for application {args.application_id}", file=sys.stderr)
        raise SystemExit(1)
    for r in rows:
        print(json.dumps(_plain(r), default=str) if args.json else _describe(args.application_id, r))


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    """A row for JSON: keys as hex, enums by name, inputs left out (export has them)."""
    out = {k: v for k, v in r.items() if not k.startswith(("f_", "view_ts_")) and k != "tag_words"}
    for k in ("application_key", "merchant_key"):
        out[k] = r[k].hex() if r[k] is not None else None
    out["status"] = status_name(r["status"])
    out["decision"] = pb.Decision.Name(r["decision"]).removeprefix("DECISION_")
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
    from pathlib import Path

    from services.decisionlog.reader import export

    if args.end <= args.start:
        raise SystemExit("creditauth: error: --to must be after --from")
    root = settings.decision_log.root(settings.data_dir)
    n = export(root, args.start, args.end, Path(args.out), args.format)
    print(f"exported {n:,} logged decisions ({args.start:%Y-%m-%d %H:%M} to {args.end:%Y-%m-%d %H:%M}) to {args.out}")
