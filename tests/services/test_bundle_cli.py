"""``creditauth bundle ...`` through the real argument parser and handlers, on the small world:
build, import, list, show, diff, validate (a tampered bundle refused, file named), promote (a
broken bundle refused, the deployment unchanged) and rollback."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from features.settings import FeatureSettings
from features.training import training_frame
from services.bundles import Registry
from services.cli import main as cli_main
from services.cli.bundle import add_bundle
from services.errors import CreditAuthError
from tests.conftest import World
from tests.services.test_bundles import SMALL, _lgb_model, policy_variant, rebundle


def _registered() -> bool:
    """Whether ``services.cli.main`` lists the bundle commands (then the tests go through ``main``)."""
    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "bundle" in sub.choices


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """One command as ``creditauth`` runs it: parse, settings, handler, errors to exit code 2."""
    code = 0
    try:
        if _registered():
            cli_main.main(argv)
        else:  # main.py does not register ``bundle`` yet: the same steps main takes
            parser = argparse.ArgumentParser(prog="creditauth")
            add_bundle(parser.add_subparsers(dest="group", required=True), cli_main._common)
            args = parser.parse_args(argv)
            try:
                args.run(cli_main.settings_from(args), args)
            except CreditAuthError as exc:
                print(f"creditauth: error: {exc}", file=sys.stderr)
                sys.exit(2)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def env(clean_world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("cli")
    return {"data": str(clean_world.data_dir), "reg": str(tmp / "registry"), "tmp": str(tmp)}


def cmd(env: dict[str, str], *words: str) -> list[str]:
    return ["bundle", words[0], "--data-dir", env["data"], "--registry", env["reg"], *words[1:]]


def bundle_id(out: str) -> str:
    match = re.search(r"^bundle ([0-9a-f]{64})$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def test_the_risk_teams_round_trip(env: dict[str, str], clean_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = Path(env["tmp"])
    code, out, err = run(cmd(env, "build"), capsys)
    assert code == 0, err
    first = bundle_id(out)
    assert clean_world.model_version in out and "policy-2026.11.1" in out
    code, out, err = run(cmd(env, "build", "--policy", str(policy_variant(tmp, "policy-cli-2", 2.5))), capsys)
    assert code == 0, err
    second = bundle_id(out)
    assert second != first

    # A model trained elsewhere, with one feature under another name.
    model = _lgb_model(clean_world, ["revenue_30d", *SMALL[1:]], tmp / "elsewhere.txt")
    code, out, err = run(cmd(env, "import", str(model)), capsys)
    line = next(i for i, t in enumerate(model.read_text().splitlines(), 1) if t.startswith("feature_names="))
    unknown = rf"elsewhere\.txt:{line}: feature_names: unknown to the feature catalogue: \['revenue_30d'\]"
    assert code == 2 and re.search(unknown, err), err
    code, out, err = run(cmd(env, "import", str(model), "--map", "revenue_30d=rev_mean_30d",
                             "--model-version", "elsewhere-1"), capsys)
    assert code == 0, err
    imported = bundle_id(out)

    code, out, _ = run(cmd(env, "list"), capsys)
    assert code == 0 and {first[:12], second[:12], imported[:12]} <= set(re.findall(r"^([0-9a-f]{12})", out, re.M))
    assert "elsewhere-1" in out

    code, out, _ = run(cmd(env, "diff", first[:10], second[:10]), capsys)
    assert code == 0 and "policy grades[0].limit_multiple: 3.0 -> 2.5" in out and "file policy.yaml" in out

    code, out, err = run(cmd(env, "promote", first[:10], "--deployment", "prod"), capsys)
    assert code == 0 and "(none) ->" in out, err
    code, out, err = run(cmd(env, "promote", second[:10], "--deployment", "prod"), capsys)
    assert code == 0 and f"{first[:12]} -> {second[:12]}" in out, err

    code, out, _ = run(cmd(env, "show", second[:10]), capsys)
    shown = json.loads(out)
    assert shown["deployed"] == ["prod"] and shown["manifest"]["policy"]["version"] == "policy-cli-2"
    assert shown["training"]["holdout"]["auc"] > 0.5

    code, out, err = run(cmd(env, "rollback", "--deployment", "prod"), capsys)
    assert code == 0 and "rolled back" in out, err
    assert Registry(env["reg"]).index().deployments["prod"].bundle == first


def test_validate_refuses_a_tampered_bundle_naming_the_file(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(cmd(env, "build"), capsys)
    bid = bundle_id(out)
    code, out, err = run(cmd(env, "validate", bid[:8]), capsys)
    assert code == 0 and "valid" in out and "parity PASSED" in out, err
    copy = Path(env["tmp"]) / "tampered"
    shutil.copytree(Path(env["reg"]) / "bundles" / bid, copy / "bundles" / bid)
    model = copy / "bundles" / bid / "model.txt"
    data = bytearray(model.read_bytes())
    data[100] ^= 0x20
    model.write_bytes(bytes(data))
    argv = ["bundle", "validate", bid, "--data-dir", env["data"], "--registry", str(copy)]
    code, out, err = run(argv, capsys)
    assert code == 2 and f"{bid}/model.txt: <file>: sha256" in err and "tampered" in err, err


def test_promote_refuses_a_broken_bundle_and_the_deployment_stays(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    reg = Registry(env["reg"])
    code, out, err = run(cmd(env, "build"), capsys)
    good = bundle_id(out)
    run(cmd(env, "promote", good, "--deployment", "stays"), capsys)
    before = reg.index()
    text = reg.read(good).files["policy.yaml"].decode().replace("decline_pd: 0.25", "decline_pd: 0.05")
    broken = rebundle(reg, good, **{"policy.yaml": text.encode()})
    code, out, err = run(cmd(env, "promote", broken, "--deployment", "stays"), capsys)
    line = text.splitlines().index("review_pd: 0.12") + 1
    assert code == 2 and f"policy.yaml:{line}: review_pd: review_pd must not exceed decline_pd" in err, err
    assert reg.index() == before and reg.index().deployments["stays"].bundle == good
    code, _out, err = run(cmd(env, "rollback", "--deployment", "stays"), capsys)
    assert code == 2 and "nothing to roll back to" in err


def test_import_without_names_in_the_sample_is_refused(env: dict[str, str], clean_world: World,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = Path(env["tmp"])
    model = _lgb_model(clean_world, list(SMALL), tmp / "named.txt")
    x = training_frame(FeatureSettings(data_dir=clean_world.data_dir))[0][:300]
    pq.write_table(pa.table({"rev_mean_30d": x[:, 0]}), tmp / "thin.parquet")
    code, _out, err = run(cmd(env, "import", str(model), "--sample", str(tmp / "thin.parquet")), capsys)
    assert code == 2 and "thin.parquet: columns: the sample lacks the model's features" in err, err
