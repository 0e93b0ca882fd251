"""What each subcommand does; ``main`` parses arguments and calls these."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections.abc import Callable

from tqdm import tqdm

from services.settings import Settings


def _ticker(bar: tqdm) -> Callable[[int], None]:  # type: ignore[type-arg]
    def tick(n: int) -> None:
        bar.update(n)

    return tick


def data_generate(settings: Settings, args: argparse.Namespace) -> None:
    from features.population import build_offline_tables, generate_population

    as_of = args.as_of or dt.datetime.now(dt.timezone.utc).date()
    with tqdm(total=args.merchants, desc="generate merchants", unit="merchant", disable=None) as bar:
        report = generate_population(
            settings.data_dir, merchants=args.merchants, seed=args.seed, as_of=as_of, progress=_ticker(bar)
        )
    with tqdm(total=1, desc="aggregate flows -> offline tables", bar_format="{desc}: {elapsed}", disable=None) as bar:
        paths = build_offline_tables(settings.data_dir, as_of)
        bar.update()
    print(
        f"generated {report.merchants:,} merchants, {report.flow_rows:,} daily flow rows, "
        f"default rate {report.default_rate:.1%}, as of {as_of}; offline tables in {paths['merchant_flows'].parent}"
    )


def features_apply(settings: Settings, args: argparse.Namespace) -> None:
    from features.feast_repo import apply

    with tqdm(total=1, desc="feast apply", bar_format="{desc}: {elapsed}", disable=None) as bar:
        store = apply(settings.features)
        bar.update()
    views = sorted(v.name for v in store.list_feature_views())
    print(f"applied feature repo {settings.features.repo_dir} ({settings.features.online_store}): {', '.join(views)}")


def _materialize_window(settings: Settings) -> tuple[dt.datetime, dt.datetime]:
    import polars as pl

    ts = (
        pl.scan_parquet(settings.features.offline_dir / "merchant_flows.parquet")
        .select(pl.col("event_timestamp").min().alias("lo"), pl.col("event_timestamp").max().alias("hi"))
        .collect()
    )
    lo, hi = ts["lo"][0], ts["hi"][0]
    return lo - dt.timedelta(days=1), hi + dt.timedelta(seconds=1)


def features_materialize(settings: Settings, args: argparse.Namespace) -> None:
    from features import catalog
    from features.materialize import materialize, materialize_with_feast

    start, end = _materialize_window(settings)
    if args.engine == "feast":
        secs = materialize_with_feast(settings.features, start, end)
        print(f"feast materialize: {secs:.1f} s")
        return
    import polars as pl

    rows = pl.scan_parquet(settings.features.offline_dir / "merchant_flows.parquet").select(pl.len()).collect().item()
    with tqdm(
        total=rows * len(catalog.ALL_VIEWS),
        desc=f"materialize -> {settings.features.online_store}",
        unit="row",
        disable=None,
    ) as bar:
        report = materialize(settings.features, start, end, progress=_ticker(bar))
    print(
        f"materialized {report.entities:,} entity rows ({report.values:,} values) into "
        f"{settings.features.online_store} in {report.seconds:.1f} s"
    )


def model_train(settings: Settings, args: argparse.Namespace) -> None:
    from services.models.train import train_model

    with tqdm(total=args.rounds, desc="train LightGBM", unit="round", disable=None) as bar:
        report = train_model(settings.features, rounds=args.rounds, progress=_ticker(bar))
    print(
        f"model {report.version}: {report.trees} trees on {report.rows:,} applications "
        f"(default rate {report.default_rate:.1%}), holdout AUC {report.auc_holdout:.3f}, "
        f"kernel parity max |error| {report.parity_max_abs_error:.2e}; written to {report.path}"
    )


def _event_loop() -> None:
    # uvloop cuts the front end's per-RPC cost; fall back quietly where it is absent.
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def serve(settings: Settings, args: argparse.Namespace) -> None:
    from services.stack import serve_forever

    _event_loop()
    asyncio.run(serve_forever(settings))


def demo(settings: Settings, args: argparse.Namespace) -> None:
    from services.cli.demo import run_demo

    run_demo(settings, args)


def frontend(settings: Settings, args: argparse.Namespace) -> None:
    from services.stack import serve_forever

    _event_loop()
    asyncio.run(serve_forever(settings, deploy=False))


def baseline_echo(args: argparse.Namespace) -> None:
    from services.baselines.echo import serve_echo

    _event_loop()
    asyncio.run(serve_echo(args.host, args.port))


def baseline_naive(settings: Settings, args: argparse.Namespace) -> None:
    from services.baselines.naive import serve_naive

    asyncio.run(serve_naive(settings.data_dir, settings.features.online_store, args.port))


def bench_serving(settings: Settings, args: argparse.Namespace) -> None:
    from services.bench.serving import main as bench_main

    args.data_dir = settings.data_dir
    bench_main(args)


def bench_telemetry(settings: Settings, args: argparse.Namespace) -> None:
    from services.bench.telemetry_cost import main as telemetry_main

    telemetry_main(settings, args)


def bench_capacity(settings: Settings, args: argparse.Namespace) -> None:
    from services.bench.capacity import main as capacity_main

    args.data_dir = settings.data_dir
    capacity_main(args)


def bench_channels(settings: Settings, args: argparse.Namespace) -> None:
    from services.bench.channels import main as channels_main

    channels_main(args)
