"""The parity gate and the benchmark entry point."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernels_testlib import adversarial, lgb_booster, lgb_model

from kernels import InputShapeError, ParityReport, TreeEnsemble, check_parity


@pytest.fixture(scope="module")
def ens_and_ref() -> tuple[TreeEnsemble, np.ndarray, np.ndarray]:
    text = lgb_model(n_trees=20)
    ens = TreeEnsemble.from_lightgbm(text)
    X = adversarial(200, ens.n_features, seed=41)
    return ens, X, lgb_booster(text).predict(X)


def test_exact_reference_passes(ens_and_ref) -> None:  # type: ignore[no-untyped-def]
    ens, X, ref = ens_and_ref
    report = check_parity(ens, X, ref, tolerance=0.0)
    assert isinstance(report, ParityReport)
    assert report.passed and bool(report)
    assert report.max_abs_error == 0.0 and report.mean_abs_error == 0.0
    assert report.rows == 200 and report.tolerance == 0.0
    assert "PASSED" in str(report) and "200 rows" in str(report)


def test_perturbation_is_caught_at_the_right_row(ens_and_ref) -> None:  # type: ignore[no-untyped-def]
    ens, X, ref = ens_and_ref
    bad = ref.copy()
    bad[123] += 2e-9
    bad[7] -= 1e-10
    report = check_parity(ens, X, bad, tolerance=1e-9)
    assert not report.passed
    assert report.worst_row == 123
    assert math.isclose(report.max_abs_error, 2e-9, rel_tol=1e-3)
    assert math.isclose(report.mean_abs_error, (2e-9 + 1e-10) / 200, rel_tol=1e-3)
    assert check_parity(ens, X, bad, tolerance=1e-8).passed


def test_nan_is_an_infinite_error_unless_both_nan(ens_and_ref) -> None:  # type: ignore[no-untyped-def]
    ens, X, ref = ens_and_ref
    bad = ref.copy()
    bad[5] = np.nan
    report = check_parity(ens, X, bad)
    assert not report.passed and report.worst_row == 5 and math.isinf(report.max_abs_error)


def test_raw_score_mode(ens_and_ref) -> None:  # type: ignore[no-untyped-def]
    ens, X, _ = ens_and_ref
    raw = ens.predict(X, raw_score=True)
    assert check_parity(ens, X, raw, raw_score=True).passed
    assert not check_parity(ens, X, raw).passed  # probabilities vs margins


def test_shape_and_tolerance_errors(ens_and_ref) -> None:  # type: ignore[no-untyped-def]
    ens, X, ref = ens_and_ref
    with pytest.raises(InputShapeError):
        check_parity(ens, X, ref[:-1])
    with pytest.raises(ValueError, match="tolerance"):
        check_parity(ens, X, ref, tolerance=-1.0)
    with pytest.raises(ValueError, match="tolerance"):
        check_parity(ens, X, ref, tolerance=math.nan)
    # (n, 1) column vectors are accepted as the library sometimes returns them.
    assert check_parity(ens, X, ref[:, None]).passed


def test_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from kernels import bench

    rc = bench.main(["--trees", "10", "--rows", "300", "--single", "20", "--rounds", "1",
                     "--train-rows", "2000", "--skip", "lleaves,tl2cgen,xgboost"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "kernels (ours)" in out and "lightgbm" in out and "reason codes" in out
    ours = next(line for line in out.splitlines() if line.startswith("kernels (ours)"))
    assert ours.split()[-1] == "0.0e+00"  # parity with LightGBM in the benchmark itself
