"""The table-driven wire codec against the hand-written one it replaced, in one process.

    git worktree add /tmp/oldtree 5867b2d
    (cd /tmp/oldtree && CREDITAUTH_EXT_ONLY=services/frontend python setup.py build_ext --inplace)
    taskset -c 1 .venv/bin/python docs/benchmarks/codec_compare.py /tmp/oldtree

Same inputs for both (1,000 requests; decisions with 4 reasons each), interleaved, 30
rounds, medians; it first checks that both encoders produce the same bytes.
"""

from __future__ import annotations

import glob
import importlib.util
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from creditauth.v1 import authorization_pb2 as pb
from services.frontend import wire
from services.schema.records import DecisionBatch, blank_decisions

N = 1000
CURRENCIES = b"CNYUSDEURHKDGBPSGDJPY"
REASONS = tuple((f"R_CODE_{i}", f"description {i}") for i in range(12))


def load_old(tree: str) -> Any:
    path = glob.glob(f"{tree}/services/frontend/_wire.cpython-*.so")[0]
    spec = importlib.util.spec_from_file_location("oldwire._wire", path)
    assert spec is not None and spec.loader is not None
    sys.modules["oldwire"] = types.ModuleType("oldwire")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    return old


def requests() -> tuple[list[bytes], bytes]:
    reqs = []
    for i in range(N):
        r = pb.AuthorizeRequest(
            application_id=f"app-{i:010d}", merchant_id=f"M{i:08d}", term_months=12, product=1, channel=2
        )
        r.requested_amount.amount_minor = 500_000 + i
        r.requested_amount.currency = "CNY"
        if i % 3 == 0:
            r.declared_monthly_revenue_minor = 1_000_000
        reqs.append(r)
    return [r.SerializeToString() for r in reqs], pb.AuthorizeBatchRequest(requests=reqs).SerializeToString()


def old_response() -> Any:
    """The pre-redesign ``ResponseBatch`` shape, as plain attributes."""
    resp = types.SimpleNamespace()
    resp.status = np.zeros(N, np.int8)
    resp.decision = np.ones(N, np.int8)
    resp.grade = np.ones(N, np.int8)
    resp.version = np.zeros(N, np.int8)
    resp.approved_minor = np.full(N, 500_000, np.int64)
    resp.apr_bps = np.full(N, 830, np.int32)
    resp.pd = np.full(N, 0.031)
    resp.reason = np.full((N, 15), -1, np.int16)
    resp.reason[:, 11:15] = [6, 7, 8, 9]
    resp.reason_contrib = np.zeros((N, 15), np.float32)
    resp.reason_contrib[:, 11:15] = 0.2
    resp.feature_age_s = np.full(N, 3600.0, np.float32)
    resp.stale = np.zeros(N, bool)
    resp.degraded = np.zeros(N, bool)
    resp.decision_ids = b"\n".join(b"d0123456789-%x" % i for i in range(N))
    resp.grade_letters = ("A", "B", "C", "D", "E")
    resp.reason_table = REASONS
    resp.versions = (("m-2026-11-01-abc", "policy-2026.11.1"),)
    resp.message = ""
    return resp


def new_response() -> DecisionBatch:
    rows = blank_decisions(N)
    rows["application_id"] = [f"app-{i:010d}".encode() for i in range(N)]
    rows["decision_id"] = [b"d0123456789-%x" % i for i in range(N)]
    rows["decision"], rows["approved_minor"], rows["apr_bps"], rows["risk_grade"] = 1, 500_000, 830, b"B"
    rows["pd"], rows["feature_age_s"] = 0.031, 3600.0
    rows["reason"][:, :4] = [6, 7, 8, 9]
    rows["reason_contrib"][:, :4] = 0.2
    rows["model_version"], rows["policy_version"] = b"m-2026-11-01-abc", b"policy-2026.11.1"
    return DecisionBatch(rows, REASONS)


def main() -> None:
    old = load_old(sys.argv[1])
    one, body = requests()
    codes = [CURRENCIES[i : i + 3] for i in range(0, len(CURRENCIES), 3)]
    resp, dresp = old_response(), new_response()
    apps = [f"app-{i:010d}".encode() for i in range(N)]
    cur = np.zeros(N, np.int8)
    index = np.arange(N, dtype=np.int32)
    eo, en = old.Encoder(resp, codes), wire.encoder(dresp)
    assert old.encode_batch(N, old.Encoder(resp, codes), index, apps, cur, []) == wire.encode_batch(
        N, wire.encoder(dresp), index, []
    )
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "decode batch of 1000": (
            lambda: old.decode(body, True, CURRENCIES, 4, 5),
            lambda: wire.requests.decode_batch(body, 1.0, 10_000),
        ),
        "1000 x decode_one": (
            lambda: [old.decode_one(x, CURRENCIES, 4, 5) for x in one],
            lambda: [wire.requests.decode_one(x, 1.0) for x in one],
        ),
        "encode batch of 1000 (with encoder)": (
            lambda: old.encode_batch(N, old.Encoder(resp, codes), index, apps, cur, []),
            lambda: wire.encode_batch(N, wire.encoder(dresp), index, []),
        ),
        "1000 x encode_one": (
            lambda: [old.encode_one(eo, i, apps[i], 0) for i in range(N)],
            lambda: [wire.encode_one(en, i) for i in range(N)],
        ),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    for _ in range(30):
        for name, pair in cases.items():
            for side, f in enumerate(pair):
                t = time.perf_counter()
                f()
                times[name][side].append(time.perf_counter() - t)
    print(f"{'case':<38}{'hand-written (before) ms':>26}{'table-driven (after) ms':>26}{'after/before':>14}")
    for name, (a, b) in times.items():
        ma, mb = float(np.median(a)) * 1e3, float(np.median(b)) * 1e3
        print(f"{name:<38}{ma:>26.3f}{mb:>26.3f}{mb / ma:>14.2f}")


if __name__ == "__main__":
    main()
