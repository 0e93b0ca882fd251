"""Bundles and their registry on the real small world: build, content addressing, tampering,
broken parts, parity, imports from LightGBM and XGBoost, diff, promote/rollback, index CAS."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from features import TagCatalog
from features.settings import FeatureSettings
from features.training import MODEL_COLUMNS, training_frame
from services.bundles import BundleError, Registry, load_bundle
from services.bundles.build import from_artifact, import_model
from services.bundles.deploy import promote, rollback
from services.bundles.diff import diff
from services.bundles.manifest import POLICY, REFERENCE_EXPECTED, assemble
from services.policy.config import DEFAULT_POLICY
from tests.conftest import World, feature_settings


def tags_of(world: World) -> dict[str, int]:
    return {t.name: t.id for t in TagCatalog.load(feature_settings(world))}


def policy_variant(tmp: Path, version: str, limit_a: float = 3.0) -> Path:
    """The packaged policy under another version, grade A's limit multiple changed."""
    text = DEFAULT_POLICY.read_text().replace("version: policy-2026.11.1", f"version: {version}")
    grade_a = "{grade: A, max_pd: 0.02, limit_multiple: "
    text = text.replace(f"{grade_a}3.0", f"{grade_a}{limit_a}")
    path = tmp / f"{version}.yaml"
    path.write_text(text)
    return path


def rebundle(registry: Registry, bid: str, **replace: bytes) -> str:
    """A bundle whose files are replaced and re-hashed consistently: checksums pass, content is broken."""
    old = registry.read(bid)
    files = {**old.files, **replace}
    summary = {k: v for k, v in old.manifest.items() if k not in ("files", "format")}
    return registry.put(assemble(files, summary))


@pytest.fixture(scope="module")
def reg(clean_world: World, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def first(clean_world: World, reg: Registry) -> str:
    return reg.put(from_artifact(clean_world.data_dir, clean_world.model_version, policy_path=None,
                                 tags=tags_of(clean_world)))


def test_build_is_content_addressed_and_validates(clean_world: World, reg: Registry, first: str) -> None:
    again = from_artifact(clean_world.data_dir, clean_world.model_version, policy_path=None, tags=tags_of(clean_world))
    assert again.id == first and reg.put(again) == first  # same content, same id, stored once
    assert reg.ids() == [first]
    loaded = load_bundle(reg, first, tags=tags_of(clean_world), source_check=True)
    assert loaded.model_version == clean_world.model_version
    assert loaded.policy_version == "policy-2026.11.1"
    assert loaded.parity.passed and loaded.parity.rows > 100
    training = loaded.training
    assert training["holdout"]["auc"] > 0.5 and training["data_window"]["end"].startswith("2026-1")
    features = json.loads(reg.read(first).files["features.json"])
    assert features["feature_service"] == "credit_authorization_v1" and features["features"] == list(MODEL_COLUMNS)


@pytest.mark.parametrize("name", ["model.txt", "policy.yaml", "reference_x.npy", "manifest.json"])
def test_one_byte_edited_is_refused(clean_world: World, reg: Registry, first: str, tmp_path: Path, name: str) -> None:
    import shutil

    copy = Registry(tmp_path / "copy")
    shutil.copytree(Path(reg.bundle_dir(first)), Path(copy.bundle_dir(first)))
    load_bundle(copy, first)  # the untouched copy is fine
    path = Path(copy.bundle_dir(first)) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(copy, first)
    assert any(p.file.endswith(name) and "tampered" in p.message for p in err.value.problems), err.value


def test_an_added_file_is_refused(reg: Registry, first: str, tmp_path: Path) -> None:
    import shutil

    copy = Registry(tmp_path / "copy")
    shutil.copytree(Path(reg.bundle_dir(first)), Path(copy.bundle_dir(first)))
    (Path(copy.bundle_dir(first)) / "extra.py").write_text("print('hi')")
    with pytest.raises(BundleError, match=r"extra.py: <file>: not listed in the manifest"):
        load_bundle(copy, first)


def test_broken_model_is_refused_naming_file_and_line(reg: Registry, first: str) -> None:
    text = reg.read(first).files["model.txt"].decode()
    broken = text.replace("num_leaves=", "num_leaves=x", 1)
    bid = rebundle(reg, first, **{"model.txt": broken.encode()})
    with pytest.raises(BundleError) as err:
        load_bundle(reg, bid)
    problem = err.value.problems[0]
    line = next(i for i, s in enumerate(broken.splitlines(), 1) if s.startswith("num_leaves=x"))
    assert problem.file.endswith(f"{bid}/model.txt") and problem.line == line, problem


def test_broken_policy_is_refused_naming_file_line_and_field(clean_world: World, reg: Registry, first: str) -> None:
    text = reg.read(first).files[POLICY].decode()
    broken = text.replace("review_pd: 0.12", "review_pd: 0.12\nreview_pdd: 0.3", 1)
    bid = rebundle(reg, first, **{POLICY: broken.encode()})
    with pytest.raises(BundleError) as err:
        load_bundle(reg, bid, tags=tags_of(clean_world))
    problem = err.value.problems[0]
    line = broken.splitlines().index("review_pdd: 0.3") + 1
    assert (problem.file.endswith("policy.yaml"), problem.line, problem.field) == (True, line, "review_pdd")


def test_reference_that_the_kernel_disagrees_with_fails_the_gate(reg: Registry, first: str) -> None:
    import io

    expected = np.load(io.BytesIO(reg.read(first).files[REFERENCE_EXPECTED]))
    expected[3] += 1e-6
    buf = io.BytesIO()
    np.save(buf, expected)
    bid = rebundle(reg, first, **{REFERENCE_EXPECTED: buf.getvalue()})
    with pytest.raises(BundleError, match="parity FAILED"):
        load_bundle(reg, bid)


def test_diff_names_policy_keys_and_files(clean_world: World, reg: Registry, first: str, tmp_path: Path) -> None:
    other = reg.put(from_artifact(clean_world.data_dir, clean_world.model_version,
                                  policy_path=policy_variant(tmp_path, "policy-diff", 2.5), tags=tags_of(clean_world)))
    changes = {(c.section, c.key): (c.old, c.new) for c in diff(reg.read(first), reg.read(other))}
    assert changes[("policy", "version")] == ("policy-2026.11.1", "policy-diff")
    assert changes[("policy", "grades[0].limit_multiple")] == (3.0, 2.5)
    assert ("file", "policy.yaml") in changes and ("file", "model.txt") not in changes
    assert diff(reg.read(first), reg.read(first)) == []


SMALL = ("rev_mean_30d", "amount_to_revenue", "term_months", "channel_code", "product_code")


def _lgb_model(world: World, names: list[str], path: Path) -> Path:
    import lightgbm as lgb

    x, y = training_frame(FeatureSettings(data_dir=world.data_dir))
    cols = [MODEL_COLUMNS.index(n) for n in SMALL]
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1},
                        lgb.Dataset(x[:, cols], y, feature_name=names), num_boost_round=15)
    path.write_text(booster.model_to_string())
    return path


def test_import_lightgbm_maps_names_and_lists_unknown_ones(clean_world: World, reg: Registry, tmp_path: Path) -> None:
    model = _lgb_model(clean_world, ["revenue_30d", *SMALL[1:]], tmp_path / "m.txt")
    rows = training_frame(FeatureSettings(data_dir=clean_world.data_dir))[0]
    with pytest.raises(BundleError) as err:
        import_model(model, policy_path=None, tags=tags_of(clean_world), catalogue_sample=rows)
    message = str(err.value)
    listed = message.split("the catalogue serves", maxsplit=1)[0]
    assert "m.txt" in listed and "term_months" not in listed and "revenue_30d" in listed
    with pytest.raises(BundleError, match=r"does not have: \['nope'\]"):
        import_model(model, policy_path=None, tags=None, catalogue_sample=rows,
                     mapping={"revenue_30d": "rev_mean_30d", "nope": "apps_1h"})
    bundle = import_model(model, policy_path=None, tags=tags_of(clean_world), catalogue_sample=rows,
                          mapping={"revenue_30d": "rev_mean_30d"}, training={"holdout": {"auc": 0.6}})
    bid = reg.put(bundle)
    loaded = load_bundle(reg, bid, tags=tags_of(clean_world), source_check=True)
    assert loaded.artifact.feature_names == SMALL
    assert loaded.parity.passed and loaded.training["holdout"]["auc"] == 0.6


def test_a_model_of_fewer_inputs_than_reasons_serves(clean_world: World, reg: Registry, tmp_path: Path) -> None:
    """Three features, fewer than the decider's TOP_K model reasons: it serves, with at most
    three model reasons per answer (the other slots empty)."""
    import lightgbm as lgb

    from services.scoring.decider import TOP_K
    from services.scoring.swap import SwappableEngine
    from services.settings import load_settings

    x, y = training_frame(FeatureSettings(data_dir=clean_world.data_dir))
    names = list(SMALL[:3])
    assert len(names) < TOP_K
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1},
                        lgb.Dataset(x[:, [MODEL_COLUMNS.index(n) for n in names]], y, feature_name=names), 5)
    (tmp_path / "three.txt").write_text(booster.model_to_string())
    bid = reg.put(import_model(tmp_path / "three.txt", policy_path=None, tags=tags_of(clean_world), catalogue_sample=x))
    promote(reg, "three", bid, tags=tags_of(clean_world))
    settings = load_settings(None, {"features": feature_settings(clean_world).model_dump(),
                                    "bundle": {"registry": reg.uri, "deployment": "three"}})
    engine = SwappableEngine.open(settings)
    try:
        from tests.services.test_variants import _batch, _merchants

        answer = engine.score(_batch(_merchants(clean_world, 200), "three"))
    finally:
        engine.close()
    rows = answer.rows
    assert (rows["bundle_id"] == bid.encode()).all() and not np.isnan(rows["pd"]).all()
    model_codes = {"R_LOW_REVENUE", "R_AMOUNT_VS_REVENUE", "R_LONG_TERM"}  # what the three features map to
    got = [set(answer.reason_codes(i)) & model_codes for i in range(len(rows))]
    assert any(got) and all(len(g) <= 3 for g in got)


def test_import_xgboost_json(clean_world: World, reg: Registry, tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    x, y = training_frame(FeatureSettings(data_dir=clean_world.data_dir))
    names = list(SMALL)
    cols = [MODEL_COLUMNS.index(n) for n in names]
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(x[:, cols], y, feature_names=names), num_boost_round=10)
    booster.save_model(str(tmp_path / "m.json"))
    bid = reg.put(import_model(tmp_path / "m.json", policy_path=None, tags=None, catalogue_sample=x))
    loaded = load_bundle(reg, bid, source_check=True)
    assert loaded.manifest["model"]["kind"] == "xgboost" and loaded.parity.passed
    assert loaded.artifact.feature_names == tuple(names)


def test_promote_refuses_broken_bundles_and_rollback_walks_history(
    clean_world: World, reg: Registry, first: str, tmp_path: Path
) -> None:
    tags = tags_of(clean_world)
    second = reg.put(from_artifact(clean_world.data_dir, clean_world.model_version,
                                   policy_path=policy_variant(tmp_path, "policy-two"), tags=tags))
    moved, _ = promote(reg, "prod", first, tags=tags)
    assert (moved.before, moved.after) == (None, first)
    promote(reg, "prod", second, tags=tags)
    broken = rebundle(reg, first, **{POLICY: b"version: [\n"})
    before = reg.index()
    with pytest.raises(BundleError, match=r"policy\.yaml"):
        promote(reg, "prod", broken, tags=tags)
    assert reg.index() == before  # refused: the index, and so what serves, unchanged
    dep = reg.index().deployments["prod"]
    assert (dep.bundle, dep.history) == (second, (first,))
    moved, loaded = rollback(reg, "prod", tags=tags)
    assert (moved.before, moved.after, loaded.policy_version) == (second, first, "policy-2026.11.1")
    assert reg.index().deployments["prod"].history == ()
    with pytest.raises(BundleError, match="nothing to roll back to"):
        rollback(reg, "prod", tags=tags)


def test_index_updates_are_compare_and_swap(reg: Registry, first: str) -> None:
    from services.bundles.registry import Deployment

    start = reg.index().version
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            barrier.wait(timeout=30)
            reg.update(lambda idx: {**idx.deployments, f"d{k}": Deployment(f"d{k}", first)})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    index = reg.index()
    assert index.version == start + n  # every writer got its own version ...
    assert {f"d{k}" for k in range(n)} <= set(index.deployments)  # ... and none was lost


def test_a_hand_made_manifest_without_a_model_is_refused(reg: Registry, first: str) -> None:
    old = reg.read(first)
    bid = reg.put(assemble(old.files, {"policy": old.manifest["policy"]}))
    with pytest.raises(BundleError, match=r"manifest\.json: model: missing from the manifest"):
        load_bundle(reg, bid)


def test_a_registry_by_uri(reg: Registry, first: str, tmp_path: Path) -> None:
    """pyarrow.fs URIs (file:// here; s3://, gs:// in production) work as paths do."""
    by_uri = Registry(f"file://{tmp_path}/uri-registry")
    assert by_uri.put(reg.read(first)) == first and by_uri.ids() == [first]
    assert load_bundle(by_uri, first).id == first
    assert (tmp_path / "uri-registry" / "bundles" / first / "manifest.json").exists()


def test_a_multiclass_model_is_refused_saying_why(clean_world: World, tmp_path: Path) -> None:
    import lightgbm as lgb

    x, _ = training_frame(FeatureSettings(data_dir=clean_world.data_dir))
    cols = [MODEL_COLUMNS.index(n) for n in SMALL]
    grade = np.random.default_rng(1).integers(0, 3, len(x))
    booster = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1},
                        lgb.Dataset(x[:, cols], grade, feature_name=list(SMALL)), 3)
    (tmp_path / "grades.txt").write_text(booster.model_to_string())
    with pytest.raises(BundleError) as err:
        import_model(tmp_path / "grades.txt", policy_path=None, tags=None, catalogue_sample=x)
    message = str(err.value)
    assert "grades.txt:" in message and "num_class=3" in message and "serves binary models and scorecards" in message
