"""The Grafana dashboard (deploy/grafana) asks only for series the front end really exports.

A real ``Telemetry`` is exercised through every recording method and scraped over HTTP;
every metric the dashboard's queries name must be in that scrape, with the labels the
queries group by.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.schema.records import DecisionBatch, blank_decisions
from services.settings import TelemetrySettings
from services.telemetry import Telemetry
from tests.support import free_port

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "creditauth-dashboard.json"
_METRIC = re.compile(r"\b((?:creditauth|rpc_server)_[a-z_]+)")
_BY = re.compile(r"by \(([^)]*)\)")


def _queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


@pytest.fixture(scope="module")
def scrape() -> str:
    port = free_port()
    tel = Telemetry(TelemetrySettings(prometheus_port=port, histogram_sample_every=1), "dashboard-test")
    rows = blank_decisions(3)
    rows["decision"] = 1
    rows["degraded"][0] = True
    rows["stale"][1] = True
    rows["status"][2] = 14
    answered = DecisionBatch(rows, (), "", {"feature_read": 0.001})
    tel.rpc("Authorize", "OK", 0.002)
    tel.rpc("AuthorizeBatch", "INVALID_ARGUMENT", 0.001)
    tel.outcome(0, 1)
    tel.outcomes(answered)
    tel.batch(3, 0.003, answered.stage_s, answered)
    tel.watch_queue(lambda: 4)
    tel.watch_ready(lambda: True)
    try:
        return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
    finally:
        tel.shutdown()


def test_every_metric_the_dashboard_queries_is_exported(scrape: str) -> None:
    exported = {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line and not line.startswith("#")}
    asked = {m for q in _queries() for m in _METRIC.findall(q)}
    assert asked, "the dashboard queries creditauth's metrics"
    missing = asked - exported
    assert not missing, f"queried but not exported: {sorted(missing)}"


def test_grouping_labels_exist_on_their_series(scrape: str) -> None:
    """A ``by (...)`` label must be on the series it groups (``le`` is the histogram's own)."""
    lines = scrape.splitlines()
    for q in _queries():
        labels = {lb.strip() for group in _BY.findall(q) for lb in group.split(",")} - {"le"}
        for metric in _METRIC.findall(q):
            grouped = labels & {lb for ln in lines if ln.startswith(metric + "{") for lb in re.findall(r'(\w+)="', ln)}
            assert grouped == labels or not labels, f"{metric}: no series labelled {labels - grouped} ({q})"


def test_the_dashboard_is_well_formed_and_provisioned_as_a_configmap() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "latency", "outcome", "degraded", "store health"):
        assert topic in titles, topic
    for q in _queries():
        assert q.count("(") == q.count(")") and q.count("{") == q.count("}"), q
    kust = yaml.safe_load((GRAFANA / "kustomization.yaml").read_text())
    (gen,) = kust["configMapGenerator"]
    assert gen["files"] == [DASHBOARD.name]
    assert kust["generatorOptions"]["labels"]["grafana_dashboard"] == "1"
    assert np.all([p["datasource"]["uid"] == "${datasource}" for p in dash["panels"]])
