"""Fixtures for the load generator's tests: a tiny population and echo servers.

Nothing here builds the real world (that takes minutes): the generator only
reads the population's parquet files, and an in-test echo server stands in
for the system under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHANNELS = ["POS_TERMINAL", "MOBILE_APP", "WEB", "PARTNER_API", "BRANCH"]
PRODUCTS = ["WORKING_CAPITAL", "INVENTORY", "EQUIPMENT", "MERCHANT_CASH_ADVANCE"]


def write_population(root: Path, merchants: int = 500, seed: int = 3) -> Path:
    """``raw/applications`` and ``raw/merchants`` shaped like the generator's output."""
    rng = np.random.default_rng(seed)
    ids = [f"M{i:08d}" for i in range(merchants)]
    apps = root / "raw" / "applications"
    apps.mkdir(parents=True, exist_ok=True)
    declared = np.where(rng.random(merchants) < 0.6, rng.integers(1_000_00, 500_000_00, merchants), -1)
    pl.DataFrame({
        "application_id": [f"A{i:08d}" for i in range(merchants)],
        "merchant_id": ids,
        "amount_minor": rng.integers(1_000_00, 2_000_000_00, merchants),
        "currency": ["CNY"] * merchants,
        "term_months": rng.choice([3, 6, 12, 18, 24, 36], merchants),
        "product": rng.choice(PRODUCTS, merchants).tolist(),
        "channel": rng.choice(CHANNELS, merchants).tolist(),
        "declared_monthly_revenue_minor": pl.Series([int(d) if d >= 0 else None for d in declared], dtype=pl.Int64),
        "defaulted": rng.random(merchants) < 0.08,
    }).write_parquet(apps / "part-00000.parquet")
    m = root / "raw" / "merchants"
    m.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"merchant_id": ids}).write_parquet(m / "part-00000.parquet")
    return root


@pytest.fixture(scope="session")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_population(tmp_path_factory.mktemp("population"))


EchoFactory = Callable[..., str]


@pytest.fixture
def echo_server() -> Iterator[EchoFactory]:
    """Start echo servers (``python -m tests.loadtest.echo_server``) on free ports; returns targets."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.loadtest.echo_server", "--port", "0", *args],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"echo server did not start: {line!r}")
        return f"127.0.0.1:{int(line.split()[1])}"

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=2)  # a deliberately frozen server cannot handle SIGTERM until it thaws
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def campaign_yaml(population: Path, target: str, body: str, **top: object) -> str:
    """A campaign file's text: ``top`` keys, then ``body`` (phases etc.)."""
    lines = [f"name: {top.pop('name', 'test')}", f"target: {target}", f"data_dir: {population}"]
    lines += [f"{k}: {v}" for k, v in top.items()]
    return "\n".join(lines) + "\n" + body
