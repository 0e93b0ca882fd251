"""Benchmark: ``python -m kernels.bench [options]``.

Trains a binary LightGBM model (and an XGBoost model of the same shape) on
synthetic data, then measures, side by side in one process and interleaved in
rounds (the best round counts, so background load hurts every engine alike):

* load / compile time,
* batch scoring time per row (one call over the whole batch, one thread),
* single-row latency from Python (one call per row, distinct rows),
* our reason codes on vs off,

for our kernels, LightGBM ``predict(num_threads=1)``, XGBoost
``inplace_predict`` (``nthread=1``), tl2cgen and lleaves (single thread).
Missing optional engines are skipped with a note. The runtime package never
imports this module.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernels import TreeEnsemble

Batch = Callable[[np.ndarray], np.ndarray]
One = Callable[[np.ndarray], float]


@dataclass
class Engine:
    name: str
    load_s: float
    batch: Batch
    one: One
    reference: str  # "lightgbm" or "xgboost": which model it runs
    batch_us: list[float] = field(default_factory=list)
    one_us: list[float] = field(default_factory=list)
    max_err: float = float("nan")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_data(n: int, n_features: int, seed: int, nan_frac: float = 0.05) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    w = rng.normal(size=n_features)
    z = np.nan_to_num(X)
    signal = z @ w + 2.0 * np.sin(3.0 * z[:, 0]) + z[:, 1] * z[:, 2]
    y = (signal + rng.normal(scale=2.0, size=n) > 0).astype(np.int32)
    X[rng.random(X.shape) < nan_frac] = np.nan
    return X, y


def _time_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _engines(args: argparse.Namespace, lgb_text: str, xgb_json: bytes,
             tmp: str, notes: list[str]) -> list[Engine]:
    engines: list[Engine] = []
    skip = set(args.skip.split(",")) if args.skip else set()

    t0 = time.perf_counter()
    ens = TreeEnsemble.from_lightgbm(lgb_text)
    engines.append(Engine("kernels (ours)", time.perf_counter() - t0, ens.predict,
                          ens.predict_one, "lightgbm"))

    import lightgbm as lgb

    t0 = time.perf_counter()
    booster = lgb.Booster(model_str=lgb_text, params={"num_threads": 1})
    def lgb_batch(X: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(X, num_threads=1))

    engines.append(Engine(
        "lightgbm", time.perf_counter() - t0, lgb_batch,
        lambda r: float(booster.predict(r[None, :], num_threads=1)[0]), "lightgbm"))

    if "tl2cgen" not in skip:
        try:
            import tl2cgen
            import treelite

            t0 = time.perf_counter()
            tl_model = treelite.frontend.from_lightgbm(booster)
            libpath = os.path.join(tmp, "tl2cgen_model.so")
            tl2cgen.export_lib(tl_model, toolchain="gcc", libpath=libpath,
                               params={"parallel_comp": 8}, nthread=os.cpu_count() or 1)
            predictor = tl2cgen.Predictor(libpath, nthread=1)
            engines.append(Engine(
                "tl2cgen", time.perf_counter() - t0,
                lambda X: np.asarray(predictor.predict(tl2cgen.DMatrix(X))).reshape(-1),
                lambda r: float(np.asarray(
                    predictor.predict(tl2cgen.DMatrix(r[None, :]))).reshape(-1)[0]),
                "lightgbm"))
        except Exception as exc:  # optional engine: report and go on
            notes.append(f"tl2cgen skipped: {type(exc).__name__}: {exc}")
    if "lleaves" not in skip:
        try:
            import lleaves

            path = os.path.join(tmp, "model.txt")
            with open(path, "w") as fh:
                fh.write(lgb_text)
            t0 = time.perf_counter()
            ll = lleaves.Model(model_file=path)
            ll.compile()
            engines.append(Engine(
                "lleaves", time.perf_counter() - t0,
                lambda X: np.asarray(ll.predict(X, n_jobs=1)),
                lambda r: float(ll.predict(r[None, :], n_jobs=1)[0]), "lightgbm"))
        except Exception as exc:
            notes.append(f"lleaves skipped: {type(exc).__name__}: {exc}")
    if "xgboost" not in skip:
        try:
            import xgboost as xgb

            t0 = time.perf_counter()
            xb = xgb.Booster(params={"nthread": 1})
            xb.load_model(bytearray(xgb_json))
            def xgb_batch(X: np.ndarray) -> np.ndarray:
                return np.asarray(xb.inplace_predict(X))

            engines.append(Engine(
                "xgboost", time.perf_counter() - t0, xgb_batch,
                lambda r: float(xb.inplace_predict(r[None, :])[0]), "xgboost"))
            t0 = time.perf_counter()
            ens_x = TreeEnsemble.from_xgboost_json(xgb_json)
            engines.append(Engine("kernels on xgboost", time.perf_counter() - t0,
                                  ens_x.predict, ens_x.predict_one, "xgboost"))
        except Exception as exc:
            notes.append(f"xgboost skipped: {type(exc).__name__}: {exc}")
    return engines


def _fmt_ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base <= 0:
        return "-"
    return f"{value / base:6.2f}x"


def _train(args: argparse.Namespace, notes: list[str]) -> tuple[str, bytes]:
    """Train (or load from --cache-dir) the LightGBM and XGBoost models."""
    import lightgbm as lgb

    key = f"t{args.trees}_l{args.leaves}_f{args.features}_n{args.train_rows}_s{args.seed}"
    cache = args.cache_dir
    lgb_path = os.path.join(cache, f"lgb_{key}.txt") if cache else ""
    xgb_path = os.path.join(cache, f"xgb_{key}.json") if cache else ""
    want_xgb = "xgboost" not in args.skip.split(",")
    if cache and os.path.exists(lgb_path) and (not want_xgb or os.path.exists(xgb_path)):
        with open(lgb_path) as fh:
            lgb_text = fh.read()
        xgb_json = b""
        if want_xgb:
            with open(xgb_path, "rb") as fh:
                xgb_json = fh.read()
        print(f"# models loaded from {cache}")
        return lgb_text, xgb_json
    X_train, y_train = make_data(args.train_rows, args.features, args.seed)
    t0 = time.perf_counter()
    booster = lgb.train(
        {"objective": "binary", "num_leaves": args.leaves, "learning_rate": 0.05,
         "min_data_in_leaf": 20, "verbose": -1, "num_threads": os.cpu_count() or 1,
         "seed": args.seed},
        lgb.Dataset(X_train, y_train), num_boost_round=args.trees)
    lgb_text = str(booster.model_to_string())
    xgb_json = b""
    if want_xgb:
        try:
            import xgboost as xgb

            xgb_model = xgb.train(
                {"objective": "binary:logistic", "tree_method": "hist",
                 "grow_policy": "lossguide", "max_leaves": args.leaves, "max_depth": 0,
                 "eta": 0.05, "nthread": os.cpu_count() or 1, "seed": args.seed},
                xgb.DMatrix(X_train, y_train), num_boost_round=args.trees)
            xgb_json = bytes(xgb_model.save_raw("json"))
            print(f"# xgboost {xgb.__version__}: lossguide, max_leaves={args.leaves}")
        except ImportError:
            notes.append("xgboost not installed: skipped")
            args.skip += ",xgboost"
    print(f"# training took {time.perf_counter() - t0:.1f} s (not measured below)")
    if cache:
        os.makedirs(cache, exist_ok=True)
        with open(lgb_path, "w") as fh:
            fh.write(lgb_text)
        if xgb_json:
            with open(xgb_path, "wb") as fh:
                fh.write(xgb_json)
    return lgb_text, xgb_json


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    import lightgbm as lgb

    print(f"# kernels benchmark  {_dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {_cpu_name()}, {os.cpu_count()} logical CPUs, {platform.platform()}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, "
          f"lightgbm {lgb.__version__}")
    print(f"# model: {args.trees} trees, {args.leaves} leaves, {args.features} features, "
          f"binary; batch {args.rows} rows; {args.single} single-row calls; "
          f"{args.rounds} rounds (best round reported)")
    lgb_text, xgb_json = _train(args, notes)

    lgb_booster = lgb.Booster(model_str=lgb_text, params={"num_threads": 1})
    X, _ = make_data(args.rows, args.features, args.seed + 1)
    X = np.ascontiguousarray(X)
    singles = [np.ascontiguousarray(X[i % args.rows]) for i in range(args.single)]
    with tempfile.TemporaryDirectory() as tmp:
        engines = _engines(args, lgb_text, xgb_json, tmp, notes)
        want = {"lightgbm": lgb_booster.predict(X, num_threads=1)}
        if xgb_json:
            import xgboost as xgb

            xb = xgb.Booster(params={"nthread": 1})
            xb.load_model(bytearray(xgb_json))
            want["xgboost"] = xb.inplace_predict(X)
        for e in engines:
            e.max_err = float(np.max(np.abs(e.batch(X) - want[e.reference])))
            e.one(singles[0])  # warm up
        ens = TreeEnsemble.from_lightgbm(lgb_text)
        reasons_on: list[float] = []
        reasons_off: list[float] = []
        reasons_one: list[float] = []
        for _ in range(args.rounds):
            for e in engines:
                t0 = time.perf_counter()
                e.batch(X)
                e.batch_us.append((time.perf_counter() - t0) / args.rows * 1e6)
                t0 = time.perf_counter()
                for r in singles:
                    e.one(r)
                e.one_us.append((time.perf_counter() - t0) / len(singles) * 1e6)
            reasons_off.append(_time_call(lambda: ens.predict(X)) / args.rows * 1e6)
            reasons_on.append(
                _time_call(lambda: ens.predict_with_reasons(X, args.top_k)) / args.rows * 1e6)
            t0 = time.perf_counter()
            for r in singles:
                ens.predict_with_reasons(r[None, :], args.top_k)
            reasons_one.append((time.perf_counter() - t0) / len(singles) * 1e6)

    ours = engines[0]
    base_batch = min(ours.batch_us)
    base_one = min(ours.one_us)
    base_load = ours.load_s
    print()
    print(f"{'engine':<20} {'load/compile':>12} {'x ours':>8} {'batch us/row':>13} "
          f"{'x ours':>8} {'1-row us':>9} {'x ours':>8} {'median batch':>13} {'max|err|':>9}")
    for e in engines:
        b = min(e.batch_us)
        o = min(e.one_us)
        print(f"{e.name:<20} {e.load_s:>10.3f} s {_fmt_ratio(e.load_s, base_load):>8} "
              f"{b:>13.3f} {_fmt_ratio(b, base_batch):>8} {o:>9.2f} {_fmt_ratio(o, base_one):>8} "
              f"{statistics.median(e.batch_us):>13.3f} {e.max_err:>9.1e}")
    off, on, one_r = min(reasons_off), min(reasons_on), min(reasons_one)
    print()
    print(f"reason codes (top_k={args.top_k}, Saabas): batch {on:.3f} us/row vs {off:.3f} off "
          f"({on / off:.2f}x); single row {one_r:.2f} us vs {base_one:.2f} off "
          f"({one_r / base_one:.2f}x)")
    print(f"kernel serving batches: {ens.kernel_name}")
    for n in notes:
        print(f"note: {n}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", type=int, default=500)
    p.add_argument("--leaves", type=int, default=31)
    p.add_argument("--features", type=int, default=40)
    p.add_argument("--rows", type=int, default=20_000, help="batch size")
    p.add_argument("--single", type=int, default=2_000, help="single-row calls per round")
    p.add_argument("--train-rows", type=int, default=30_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--skip", default="", help="comma list: tl2cgen,lleaves,xgboost")
    p.add_argument("--cache-dir", default="",
                   help="keep trained models here and reuse them on later runs")
    p.add_argument("--quick", action="store_true",
                   help="small run: 100 trees, 5k rows, 500 single rows, 3 rounds, no lleaves")
    args = p.parse_args(argv)
    if args.quick:
        args.trees, args.rows, args.single, args.rounds = 100, 5_000, 500, 3
        args.train_rows = 20_000
        args.skip = ",".join(filter(None, [args.skip, "lleaves"]))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
