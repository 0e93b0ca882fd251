"""``creditauth replay`` and ``creditauth whatif``: logged decisions decided again.

``replay LOG_DIR`` recomputes every decision logged under ``LOG_DIR`` from its logged
inputs: with the versions that made them (the default) it must be identical, and exits 1
listing the first rows that are not; with ``--model`` / ``--policy`` naming others it
prints what changed as JSON. ``whatif`` compares a candidate with a champion on a log or a
population and writes ``whatif.json`` and ``whatif.html``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from services.errors import ConfigError
from services.settings import Settings

if TYPE_CHECKING:
    from services.decisionlog.makers import Makers, Side
    from services.decisionlog.whatif import Compared

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _lgd(s: str) -> float:
    try:
        v = float(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from exc
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v}")
    return v


def add_replay(sub: _Subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    rp = sub.add_parser("replay", help="recompute every logged decision from its logged inputs")
    common(rp)
    rp.add_argument("log_dir", type=Path, help="the log's root (date=*/hour=* Parquet files)")
    # dest names of their own: the settings' policy_path stays the served policy.
    rp.add_argument("--model", dest="replay_model", help="decide with this model version (default: as logged)")
    rp.add_argument("--policy", dest="replay_policy", type=Path, help="decide with this policy YAML (default: logged)")
    rp.add_argument("--bundle", dest="replay_bundle",
                    help="decide every row with this registry bundle (id or prefix; default: each row's own)")
    rp.add_argument("--registry", help="the bundle registry (default: bundle.registry, else <data_dir>/registry)")
    rp.add_argument("--show", type=int, default=10, help="mismatches listed (default 10)")
    rp.add_argument("--json", action="store_true", help="the summary as JSON")
    rp.set_defaults(run=replay)
    wi = sub.add_parser("whatif", help="a candidate model/policy against the champion: figures, changes, by segment")
    common(wi)
    cand = wi.add_mutually_exclusive_group(required=True)
    cand.add_argument("--model", dest="candidate_model", help="the candidate's model version")
    cand.add_argument("--bundle", dest="candidate_bundle", help="the candidate: a registry bundle (id or prefix)")
    wi.add_argument("--against", dest="against_bundle", help="the champion: a registry bundle (default: as logged)")
    wi.add_argument("--registry", help="the bundle registry (default: bundle.registry, else <data_dir>/registry)")
    wi.add_argument("--policy", dest="candidate_policy", type=Path, help="the candidate's policy YAML")
    wi.add_argument("--against-model", help="the champion's model (default: as logged / the served model)")
    wi.add_argument("--against-policy", type=Path, help="the champion's policy YAML (default: as logged / served)")
    src = wi.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", type=Path, help="decide the decisions logged under this root again")
    src.add_argument("--population", type=Path, help="decide this data directory's applications")
    wi.add_argument("--lgd", type=_lgd, default=0.45, help="loss given default for expected loss (default 0.45)")
    wi.add_argument("--out", type=Path, default=Path("whatif-report"), help="directory for whatif.json/.html")
    wi.set_defaults(run=whatif)


def _makers(settings: Settings, args: argparse.Namespace, *policies: Path | None) -> Makers:
    from services.bundles import Registry
    from services.decisionlog.makers import Makers

    # Rows name the bundle that decided them: the registry replays each with its own.
    uri = args.registry or (settings.bundle.registry if settings.bundle else None)
    if uri is None and (settings.data_dir / "registry").is_dir():
        uri = str(settings.data_dir / "registry")
    return Makers(settings.features, [*policies, settings.policy_path], Registry(uri) if uri else None)


def _bar(total: int, desc: str) -> tqdm:  # type: ignore[type-arg]
    return tqdm(total=total, desc=desc, unit="decision", unit_scale=True, disable=None, file=sys.stderr)


def replay(settings: Settings, args: argparse.Namespace) -> None:
    from services.decisionlog.replay import read_log, recompute
    from services.decisionlog.whatif import changes, compared, frame_of, summary

    if not args.log_dir.is_dir():
        raise ConfigError(f"{args.log_dir}: no such log directory")
    makers = _makers(settings, args, args.replay_policy)
    t0 = time.perf_counter()
    log = read_log(args.log_dir)
    with _bar(log.decided.height, "replay") as bar:
        rec = recompute(log, makers, [(args.replay_model, args.replay_policy, args.replay_bundle)], bar.update)
    s = summary(rec, args.show)
    s["seconds"] = round(time.perf_counter() - t0, 3)
    if not rec.exact[0]:  # other versions: what changed, not whether it is identical
        c = compared(rec)
        doc = {**{k: s[k] for k in ("decided", "skipped_replays", "skipped_refused", "seconds")},
               "logged": c.champion, "replayed_with": c.candidate,
               "changes": changes(c, frame_of(c, args.replay_policy))}
        print(json.dumps(doc, indent=2, default=str))
        return
    print(json.dumps(s, indent=2, default=str) if args.json else _text(s))
    if s["mismatched"]:
        raise SystemExit(1)


def _text(s: dict[str, Any]) -> str:
    lines = [
        f"replayed {s['decided']:,} logged decisions with {'; '.join(s['made_by']) or '-'} in {s['seconds']:.1f} s "
        f"(skipped {s['skipped_replays']:,} replays and {s['skipped_refused']:,} refused items)",
        f"identical: {s['identical']:,}; mismatched: {s['mismatched']:,}",
    ]
    if s["mismatched"]:
        lines.append("by field: " + ", ".join(f"{k} {v:,}" for k, v in s["mismatched_by_field"].items() if v))
        lines += [f"  {json.dumps(m, default=str)}" for m in s["first_mismatches"]]
    return "\n".join(lines)


def whatif(settings: Settings, args: argparse.Namespace) -> None:
    from services.decisionlog.report import render
    from services.decisionlog.whatif import report

    makers = _makers(settings, args, args.candidate_policy, args.against_policy)
    t0 = time.perf_counter()
    c = _compare_log(makers, args) if args.log is not None else _compare_population(settings, makers, args)
    doc = report(c, args.lgd, args.candidate_policy)
    doc["seconds"] = round(time.perf_counter() - t0, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whatif.json").write_text(json.dumps(doc, indent=2, default=str))
    (args.out / "whatif.html").write_text(render(doc))
    t = doc["totals"]
    print(
        f"{t['n']:,} decisions in {doc['seconds']:.1f} s; {doc['changes']['changed']:,} change\n"
        f"  approval rate   {t['approval_rate_a']:.2%} -> {t['approval_rate_b']:.2%}\n"
        f"  average limit   {t['mean_limit_a'] or 0:,.0f} -> {t['mean_limit_b'] or 0:,.0f} {doc['currency']}\n"
        f"  expected loss   {t['expected_loss_a']:,.0f} -> {t['expected_loss_b']:,.0f} {doc['currency']}"
        f" (LGD {args.lgd})\n  report: {args.out / 'whatif.html'}, {args.out / 'whatif.json'}"
    )


def _compare_log(makers: Makers, args: argparse.Namespace) -> Compared:
    from services.decisionlog.replay import read_log, recompute
    from services.decisionlog.whatif import compared

    if not args.log.is_dir():
        raise ConfigError(f"--log: {args.log}: no such log directory")
    log = read_log(args.log)
    sides: list[Side] = [(args.candidate_model, args.candidate_policy, args.candidate_bundle)]
    if args.against_model is not None or args.against_policy is not None or args.against_bundle is not None:
        sides.append((args.against_model, args.against_policy, args.against_bundle))
    with _bar(log.decided.height, "what-if") as bar:
        return compared(recompute(log, makers, sides, bar.update))


def _compare_population(settings: Settings, makers: Makers, args: argparse.Namespace) -> Compared:
    from services.decisionlog.whatif import compare_population, population_inputs

    if not args.population.is_dir():
        raise ConfigError(f"--population: {args.population}: no such data directory")
    x = population_inputs(settings.features.model_copy(update={"data_dir": args.population}))
    candidate = (args.candidate_model, args.candidate_policy or settings.policy_path, args.candidate_bundle)
    champion = (args.against_model or settings.model_version, args.against_policy or settings.policy_path,
                args.against_bundle)
    with _bar(2 * len(x), "what-if") as bar:  # both sides decide every application
        return compare_population(x, makers, candidate, champion, bar.update)
