"""The generated Feast repository works with Feast's own CLI: ``feast apply``,
``feast materialize`` and ``feast serve`` on it, and what the feature server answers is
what the project's reader reads from the same store."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from features import MATRIX_COLUMNS, open_backend
from features.settings import FeatureSettings
from tests.conftest import AS_OF
from tests.support import free_port

FEAST = str(Path(sys.executable).parent / "feast")
MERCHANTS = ["M00000001", "M00000002", "M00000003", "M00000077"]


def _feast(repo: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEAST, "-c", str(repo), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSettings, Path]:
    """A small world whose repo was written and applied, then materialized by the feast CLI."""
    from features.feast_repo import apply
    from features.population import build_offline_tables, generate_population

    root = tmp_path_factory.mktemp("feastcli")
    generate_population(root, merchants=300, seed=11, as_of=AS_OF)
    build_offline_tables(root, AS_OF)
    settings = FeatureSettings(data_dir=root, max_feature_age_s=10 * 365 * 86400.0)
    apply(settings)
    repo = root / "feature_repo"
    applied = _feast(repo, "apply")
    assert applied.returncode == 0, applied.stderr[-2000:]
    start = dt.datetime.combine(AS_OF, dt.time()) - dt.timedelta(days=1)
    end = dt.datetime.combine(AS_OF, dt.time()) + dt.timedelta(seconds=1)
    done = _feast(repo, "materialize", start.isoformat(), end.isoformat())
    assert done.returncode == 0, done.stderr[-2000:]
    return settings, repo


def test_feast_cli_lists_what_the_project_defines(repo: tuple[FeatureSettings, Path]) -> None:
    _, path = repo
    views = _feast(path, "feature-views", "list")
    assert views.returncode == 0, views.stderr[-2000:]
    services = _feast(path, "feature-services", "list")
    assert "credit_authorization_v1" in services.stdout


def test_feast_materialize_fills_the_store_the_reader_reads(repo: tuple[FeatureSettings, Path]) -> None:
    settings, _ = repo
    reader = open_backend(settings).reader()
    try:
        batch = reader.read(MERCHANTS)
    finally:
        reader.close()
    assert batch.found.all(), "every merchant materialized by the feast CLI is found"
    assert np.isfinite(batch.matrix[:, MATRIX_COLUMNS.index("rev_mean_30d")]).all()


@pytest.fixture()
def server(repo: tuple[FeatureSettings, Path]) -> Iterator[int]:
    _, path = repo
    port = free_port()
    proc = subprocess.Popen([FEAST, "-c", str(path), "serve", "-p", str(port), "--no-access-log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded wait on observed state: the server answers its health check
            assert proc.poll() is None, f"feast serve exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "feast serve did not come up in 120 s"
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def test_feast_serve_answers_what_the_reader_reads(repo: tuple[FeatureSettings, Path], server: int) -> None:
    settings, _ = repo
    n = len(MERCHANTS)
    # The feature service includes the on-demand view: its request data rides with the entities.
    request = {"amount_minor": [500_000] * n, "term_months": [12] * n, "product_code": [1] * n,
               "channel_code": [1] * n, "declared_monthly_revenue_minor": [0] * n}
    body = json.dumps({"feature_service": "credit_authorization_v1",
                       "entities": {"merchant_id": MERCHANTS, **request}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{server}/get-online-features", data=body,
                                 headers={"Content-Type": "application/json"})
    answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
    names = answer["metadata"]["feature_names"]
    values = {n: r["values"] for n, r in zip(names, answer["results"], strict=True)}
    reader = open_backend(settings).reader()
    try:
        batch = reader.read(MERCHANTS)
    finally:
        reader.close()
    compared = 0
    for column in ("rev_mean_30d", "business_age_days", "refund_ratio_30d"):
        if column not in values:
            continue
        served = np.array(values[column], dtype=np.float64)
        ours = batch.matrix[:, MATRIX_COLUMNS.index(column)].astype(np.float64)
        np.testing.assert_allclose(ours, served, rtol=1e-6)
        compared += 1
    assert compared >= 2, f"the feature service serves the features compared (got {sorted(values)[:10]})"
