"""``python -m loadtest``: quick runs, campaigns, campaign checks, reports and capacity plans.

Exit codes of ``campaign``: 0 every SLO gate passed; 1 a gate failed; 2 the
campaign file or the command line is wrong; 3 the run failed (could not
connect, a generator died); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtest.campaign import Campaign
    from loadtest.progress import Progress
    from loadtest.results import TargetRun

_DESCRIPTION = """Load tests against the creditauth gRPC API: quick runs, campaigns, reports, capacity.

Exit codes of "campaign": 0 every SLO gate passed; 1 a gate failed; 2 the campaign
file or the command line is wrong; 3 the run failed (could not connect, a generator
died); 130 interrupted. See docs/loadtest.md."""

EXIT_PASS, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _loopback_only(target: str) -> str:
    from loadtest.targets import TargetRefused, check_target

    try:
        return check_target(target)
    except TargetRefused as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _processes(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"must be 1-64, got {n}")
    return n


def _cmd_quick(args: argparse.Namespace) -> int:
    from loadtest.quick import quick

    try:
        import uvloop

        out = uvloop.run(quick(args))
    except ImportError:
        out = asyncio.run(quick(args))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return EXIT_PASS


def _cmd_validate(args: argparse.Namespace) -> int:
    from loadtest.campaign import CampaignError, load_campaign

    status = EXIT_PASS
    for path in args.files:
        try:
            c = load_campaign(path)
        except CampaignError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_USAGE
            continue
        print(f"{path}: ok: {len(c.phases)} phases, {c.duration:g} s, target {c.target}")
    return status


def _cmd_campaign(args: argparse.Namespace) -> int:
    from loadtest.progress import Progress
    from loadtest.report import default_report_dir, write_report
    from loadtest.results import campaign_summary

    campaign = _load_campaign_for_run(args)
    if isinstance(campaign, int):
        return campaign
    progress = Progress(enabled=not args.quiet)
    runs, interrupted = _run_targets(campaign, progress, inline=args.inline)
    if not runs:
        return EXIT_INTERRUPTED
    summary = campaign_summary(campaign, runs)
    _show_runs(progress, summary, runs)
    report_dir = args.report_dir or default_report_dir(campaign.name)
    page = write_report(report_dir, summary, runs)
    status = runs[0].status
    verdict = (
        ("PASSED" if summary["passed"] else "FAILED") if status == "complete" else f"{status.upper()} (partial report)"
    )
    print(f"\n{campaign.name}: {verdict}. Report: {page.resolve()}", file=sys.stderr)
    if args.json:
        json.dump({k: v for k, v in summary.items() if k != "runs"}
                  | {"runs": [{k: v for k, v in r.items() if k != "seconds"} for r in summary["runs"]]},
                  sys.stdout)
        sys.stdout.write("\n")
    if interrupted:
        return EXIT_INTERRUPTED
    if any(r.status == "failed" for r in runs):
        return EXIT_RUN_FAILED
    return EXIT_PASS if summary["passed"] else EXIT_GATE_FAILED


def _load_campaign_for_run(args: argparse.Namespace) -> Campaign | int:
    """The campaign with the command line's overrides, or ``EXIT_USAGE`` (reported) if it or its data is wrong."""
    from loadtest.campaign import CampaignError, load_campaign
    from loadtest.mix import population_files

    try:
        campaign = load_campaign(args.file).with_overrides(
            target=args.target, compare=args.compare, compare_label=args.compare_label,
            data_dir=str(args.data_dir) if args.data_dir else None, processes=args.processes,
        )
        population_files(Path(campaign.data_dir))
    except CampaignError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return campaign


def _run_targets(campaign: Campaign, progress: Progress, *, inline: bool) -> tuple[list[TargetRun], bool]:
    """Run the campaign against its target, then its comparison target; ``(runs, interrupted)``."""
    from loadtest.runner import run_target

    targets = [(campaign.target_label, campaign.target)]
    if campaign.compare:
        targets.append((campaign.compare_label, campaign.compare))
    runs: list[TargetRun] = []
    for label, target in targets:
        try:
            run = run_target(campaign, target, label, progress=progress, inline=inline)
        except KeyboardInterrupt:
            return runs, True
        runs.append(run)
        if run.status == "interrupted":
            return runs, True
    return runs, False


def _show_runs(progress: Progress, summary: dict[str, Any], runs: list[TargetRun]) -> None:
    from loadtest.results import evaluate_gates

    for rs, run in zip(summary["runs"], runs, strict=True):
        progress.table(rs)
        if run.status == "complete":
            progress.gates(evaluate_gates(run))
        else:
            progress.say(f"  gates not evaluated: the run is {run.status}")


def _cmd_report(args: argparse.Namespace) -> int:
    from loadtest.html import render

    summary = json.loads(Path(args.summary).read_text())
    out = Path(args.out) if args.out else Path(args.summary).with_name("report.html")
    out.write_text(render(summary))
    print(out)
    return EXIT_PASS


def _cmd_picture(args: argparse.Namespace) -> int:
    from loadtest.picture import picture

    try:
        svg = picture(json.loads(Path(args.summary).read_text()))
    except (OSError, ValueError, KeyError) as exc:
        print(f"loadtest picture: {args.summary}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    Path(args.out).write_text(svg)
    print(args.out)
    return EXIT_PASS


def _cmd_capacity(args: argparse.Namespace) -> int:
    from loadtest.capacity import format_plan, measured_per_core, plan

    tiers: dict[str, float] = {}
    for name, value in (("frontend", args.frontend_rps), ("replica", args.replica_rps), ("features", args.feature_rps)):
        if value:
            tiers[name] = value
    for spec in args.tier or []:
        name, _, value = spec.partition("=")
        try:
            tiers[name] = float(value)
        except ValueError:
            print(f"loadtest capacity: --tier wants NAME=DECISIONS_PER_CORE_PER_S, got {spec!r}", file=sys.stderr)
            return EXIT_USAGE
    if args.from_report:
        try:
            per_core = measured_per_core(Path(args.from_report), args.phase, args.cores, args.label)
        except (ValueError, OSError, KeyError) as exc:
            print(f"loadtest capacity: {exc}", file=sys.stderr)
            return EXIT_USAGE
        tiers.setdefault("stack", per_core)
    if not tiers:
        print("loadtest capacity: give per-core throughputs (--frontend-rps, --replica-rps, --tier NAME=X) "
              "or --from-report", file=sys.stderr)
        return EXIT_USAGE
    try:
        p = plan(tiers, args.target_rps, utilisation=args.utilisation, spare=args.spare,
                 cores_per_node=args.cores_per_node)
    except ValueError as exc:
        print(f"loadtest capacity: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(p, indent=1) if args.json else format_plan(p))
    return EXIT_PASS


def _add_picture(sub: Any) -> None:
    pic = sub.add_parser("picture", help="a report's latency and throughput charts as one standalone SVG")
    pic.add_argument("summary", type=Path, help="a campaign's summary.json")
    pic.add_argument("--out", type=Path, required=True, help="where to write the SVG")
    pic.set_defaults(func=_cmd_picture)


def build_parser() -> argparse.ArgumentParser:
    # `creditauth loadtest ...` hands its arguments to this parser (also `python -m loadtest`).
    p = argparse.ArgumentParser(prog="creditauth loadtest", description=_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("quick", help="short closed-loop run of unary, batch and stream RPCs; JSON on stdout")
    q.add_argument("--target", default="127.0.0.1:50051", type=_loopback_only,
                   help="HOST:PORT of the front end, on loopback (default 127.0.0.1:50051)")
    q.add_argument("--data-dir", type=Path, default=Path(".creditauth"),
                   help="the synthetic population the requests name merchants from (default .creditauth)")
    q.add_argument("--requests", type=int, default=4000, help="unary Authorize calls (default 4000)")
    q.add_argument("--concurrency", type=int, default=64, help="calls in flight at once (default 64)")
    q.add_argument("--batch-calls", type=int, default=200, help="AuthorizeBatch calls (default 200)")
    q.add_argument("--stream-requests", type=int, default=10_000,
                   help="requests sent over AuthorizeStream (default 10,000)")
    q.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds (default 10)")
    q.add_argument("--tls-ca", type=Path, help="connect with TLS, checking the server against this CA (PEM)")
    q.add_argument("--tls-name", default="localhost", help="the name the server certificate must carry")
    q.set_defaults(func=_cmd_quick)

    c = sub.add_parser("campaign", help="run a campaign file: live progress, report, SLO gates set the exit code")
    c.add_argument("file", type=Path, help="campaign YAML (see loadtest/campaigns/)")
    c.add_argument("--target", help="HOST:PORT to load (default: the campaign's target)")
    c.add_argument("--compare", help="HOST:PORT of a second target to run the same load against")
    c.add_argument("--compare-label", help="name of the comparison target in the report")
    c.add_argument("--report-dir", type=Path, help="where to write the report (default: loadtest-reports/NAME-TIME)")
    c.add_argument("--data-dir", type=Path, help="the synthetic population's data dir (default: the campaign's)")
    c.add_argument("--processes", type=_processes, help="generator processes, 1-64 (default: the campaign's)")
    c.add_argument("--quiet", action="store_true", help="no per-second progress")
    c.add_argument("--inline", action="store_true",
                   help="run the generators as threads of this process (debugging; shares one core)")
    c.add_argument("--json", action="store_true", help="also print the summary (without per-second rows) as JSON")
    c.set_defaults(func=_cmd_campaign)

    v = sub.add_parser("validate", help="check campaign files without running them")
    v.add_argument("files", nargs="+", type=Path, help="campaign YAML files")
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser("report", help="re-render report.html from a summary.json")
    r.add_argument("summary", type=Path, help="a campaign's summary.json")
    r.add_argument("--out", type=Path, help="where to write the HTML (default: report.html beside the summary)")
    r.set_defaults(func=_cmd_report)

    _add_picture(sub)
    k = sub.add_parser("capacity", help="cores and nodes for a target rate from measured per-core throughput")
    k.add_argument("--target-rps", type=float, default=410_000.0, help="decisions/s to plan for (default 410,000)")
    k.add_argument("--frontend-rps", type=float, help="decisions/s one front-end core sustains within SLO")
    k.add_argument("--replica-rps", type=float, help="decisions/s one scoring-replica core sustains within SLO")
    k.add_argument("--feature-rps", type=float, help="feature rows/s one online-store core serves within SLO")
    k.add_argument("--tier", action="append", help="another tier: NAME=DECISIONS_PER_CORE_PER_S (repeatable)")
    k.add_argument("--from-report", help="a campaign summary.json: use a phase's throughput per core as tier 'stack'")
    k.add_argument("--phase", default="steady", help="phase of --from-report (default: steady)")
    k.add_argument("--cores", type=float, default=2.0, help="cores the measured system used (default: 2)")
    k.add_argument("--label", help="target label in --from-report (default: the first)")
    k.add_argument("--utilisation", type=float, default=0.6, help="planned load as a share of capacity (0.6)")
    k.add_argument("--spare", type=int, default=1, help="spare units per tier, N+k (default 1)")
    k.add_argument("--cores-per-node", type=int, default=32, help="cores of one node (default 32)")
    k.add_argument("--json", action="store_true", help="print the plan as JSON")
    k.set_defaults(func=_cmd_capacity)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
