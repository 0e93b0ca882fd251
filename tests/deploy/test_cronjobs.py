"""Scheduled work: the materialization CronJob, and what every CronJob of a render must hold.

Pod security, resources, read-only root filesystems, Secret handling and network
isolation of CronJob pods are checked with every other pod (test_security,
test_workloads: ``support.pod_templates`` includes CronJobs). Here: the schedule and its
limits, the command against the real CLI, and least privilege for the materializer.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.main import build_parser, settings_from
from services.settings import load_settings

from .support import (
    SECRETS_DIR,
    SETTINGS_FILE,
    TARGETS,
    container,
    find,
    mounted_settings_doc,
    one,
    rendered,
    secret_file,
    serve_config,
    settings_files,
    template_of,
)

MATERIALIZE = "creditauth-materialize"
# Fields of CronJobSpec and JobSpec (batch/v1, Kubernetes 1.33). The API server drops or
# refuses anything else; offline there is no schema for built-in kinds, so a misspelt
# `activeDeadlineSecond` would pass every other check.
CRONJOB_SPEC = {
    "schedule", "timeZone", "startingDeadlineSeconds", "concurrencyPolicy", "suspend", "jobTemplate",
    "successfulJobsHistoryLimit", "failedJobsHistoryLimit",
}
JOB_SPEC = {
    "parallelism", "completions", "activeDeadlineSeconds", "podFailurePolicy", "successPolicy", "backoffLimit",
    "backoffLimitPerIndex", "maxFailedIndexes", "selector", "manualSelector", "template", "ttlSecondsAfterFinished",
    "completionMode", "suspend", "podReplacementPolicy", "managedBy",
}
# Scheduled jobs are short and often: keep a few for inspection, not hundreds of pods.
MAX_HISTORY = 5


def _expand(field: str, lo: int, hi: int) -> list[int]:
    """The values a cron field (`*`, `*/n`, `a-b`, `a-b/n`, `a,b`, numbers) selects in [lo, hi]."""
    values: set[int] = set()
    for part in field.split(","):
        rng, _, step = part.partition("/")
        if rng == "*":
            first, last = lo, hi
        elif "-" in rng:
            first, last = (int(x) for x in rng.split("-"))
        else:
            first = last = int(rng)
        assert lo <= first <= last <= hi, f"cron field {field!r} out of [{lo}, {hi}]"
        values.update(range(first, last + 1, int(step or 1)))
    return sorted(values)


def shortest_period_s(schedule: str) -> int:
    """A lower bound on the time between two runs of a 5-field cron schedule.

    Restricting days, months or weekdays only lengthens the gaps across midnight, so the
    gaps within a day (and from the day's last run to the next day's first) bound it.
    """
    fields = schedule.split()
    assert len(fields) == 5, f"{schedule!r}: five fields expected (no @-macros, no seconds)"
    minutes = [h * 60 + m for h in _expand(fields[1], 0, 23) for m in _expand(fields[0], 0, 59)]
    gaps = [b - a for a, b in itertools.pairwise(minutes)] + [minutes[0] + 1440 - minutes[-1]]
    return min(gaps) * 60


@pytest.mark.parametrize(
    ("schedule", "period"),
    [
        ("17 * * * *", 3600), ("*/15 * * * *", 900), ("0 5,6 * * 1-5", 3600), ("30 5 * * *", 86400),
        ("0 */8 * * *", 28800), ("0,50 * * * *", 600),
    ],
)
def test_shortest_period(schedule: str, period: int) -> None:
    assert shortest_period_s(schedule) == period


def test_every_render_has_the_materialization_cronjob() -> None:
    for target in TARGETS:
        assert find(rendered(target), "CronJob", MATERIALIZE), target


@pytest.mark.parametrize("target", TARGETS)
def test_cronjobs_never_overlap_and_clean_up_after_themselves(target: str) -> None:
    crons = find(rendered(target), "CronJob")
    assert crons
    for cron in crons:
        name, spec = cron["metadata"]["name"], cron["spec"]
        job = spec["jobTemplate"]["spec"]
        assert set(spec) <= CRONJOB_SPEC, f"{name}: unknown CronJob fields {sorted(set(spec) - CRONJOB_SPEC)}"
        assert set(job) <= JOB_SPEC, f"{name}: unknown Job fields {sorted(set(job) - JOB_SPEC)}"
        assert spec["concurrencyPolicy"] == "Forbid", f"{name}: two runs at once would race"
        assert spec.get("timeZone"), f"{name}: without timeZone the schedule follows the controller's clock"
        period = shortest_period_s(spec["schedule"])
        # A run still going when the next is due is killed first; a missed start is not made up later.
        assert 0 < job["activeDeadlineSeconds"] < period, f"{name}: deadline {job['activeDeadlineSeconds']} s"
        assert 0 < spec["startingDeadlineSeconds"] < period, name
        for limit in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
            assert 1 <= spec[limit] <= MAX_HISTORY, f"{name}: {limit}"
        assert job.get("backoffLimit") is not None and job["backoffLimit"] <= 3, name
        assert job.get("ttlSecondsAfterFinished"), f"{name}: finished Jobs would pile up"
        assert template_of(cron)["spec"]["restartPolicy"] in ("Never", "OnFailure"), name


def _materializer(target: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], list[str]]:
    resources = rendered(target)
    tpl = template_of(one(resources, "CronJob", MATERIALIZE))
    ctr = container(tpl, "materialize")
    return resources, tpl, ctr, [*ctr.get("command", []), *ctr.get("args", [])]


@pytest.mark.parametrize("target", TARGETS)
def test_materialize_writes_the_store_the_replicas_read(target: str, tmp_path: Path) -> None:
    """The real CLI parses the command; with the mounted settings it loads into the very
    store (URL, user, layout, TLS files) and from the very data_dir the replicas read."""
    resources, tpl, ctr, argv = _materializer(target)
    assert argv[:3] == ["creditauth", "features", "materialize"]
    parsed = build_parser().parse_args(argv[1:])
    assert str(parsed.config) == SETTINGS_FILE
    mounted = tmp_path / "settings.yaml"
    mounted.write_text(yaml.safe_dump(mounted_settings_doc(resources, "CronJob", MATERIALIZE, "materialize")))
    parsed.config = mounted
    ours = settings_from(parsed).features
    replicas = load_settings(None, serve_config(one(resources, "RayService"))["applications"][0]["args"]).features
    volatile = {"timeout_s", "max_feature_age_s"}
    assert ours.model_dump(exclude=volatile) == replicas.model_dump(exclude=volatile)
    assert ours.online_store == "redis" and ours.redis_url.startswith("rediss://")
    # It reads the offline tables and records the interval in the Feast registry, both under
    # data_dir: the replicas' claim, writable here (the replicas mount it read-only).
    mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == str(ours.data_dir))
    assert not mount.get("readOnly")
    volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"])
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for group in one(resources, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        for v in group["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert volume["persistentVolumeClaim"]["claimName"] in claims


@pytest.mark.parametrize("target", TARGETS)
def test_materialize_shares_the_front_ends_settings_config_map(target: str) -> None:
    resources, tpl, _, _ = _materializer(target)
    front = one(resources, "Deployment", "creditauth-frontend")["spec"]["template"]
    names = [
        {v["configMap"]["name"] for v in t["spec"]["volumes"] if "configMap" in v} for t in (tpl, front)
    ]
    assert names[0] == names[1] and len(names[0]) == 1, names


@pytest.mark.parametrize("target", TARGETS)
def test_materialize_mounts_only_the_secret_files_it_opens(target: str) -> None:
    resources, tpl, ctr, _ = _materializer(target)
    doc = mounted_settings_doc(resources, "CronJob", MATERIALIZE, "materialize")
    needed = set()
    for key, path in settings_files(doc):
        if key.startswith("features."):
            name, secret_key, mount = secret_file(tpl, ctr, path)
            assert mount.get("readOnly") is True, path
            needed.add((name, secret_key))
    assert needed == {("creditauth-redis", "password"), ("creditauth-redis", "ca.crt")}
    mounted = {
        (v["secret"]["secretName"], item["key"])
        for v in tpl["spec"]["volumes"]
        if "secret" in v
        for item in v["secret"]["items"]
    }
    # username rides along with the password (the front ends' projection), users.acl never.
    assert needed <= mounted <= needed | {("creditauth-redis", "username")}, sorted(mounted)
    assert all(m["mountPath"].startswith(f"{SECRETS_DIR}/redis") or "secret" not in _volume(tpl, m["name"])
               for m in ctr["volumeMounts"])
    assert not [e for e in ctr.get("env", []) if "valueFrom" in e], "no Secret (not even the Ray token) in env"
    assert tpl["spec"].get("automountServiceAccountToken") is False, "it never talks to the API server"


def _volume(tpl: dict[str, Any], name: str) -> dict[str, Any]:
    volume: dict[str, Any] = next(v for v in tpl["spec"]["volumes"] if v["name"] == name)
    return volume


@pytest.mark.parametrize("target", TARGETS)
def test_materialize_runs_the_front_ends_image(target: str) -> None:
    resources, _, ctr, _ = _materializer(target)
    front = container(one(resources, "Deployment", "creditauth-frontend")["spec"]["template"], "frontend")
    assert ctr["image"] == front["image"]
