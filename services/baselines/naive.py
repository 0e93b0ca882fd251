"""The naive stack, for comparison: what a team builds first.

Ray Serve's built-in gRPC proxy routes every RPC to one deployment, which
calls the Feast SDK (``get_online_features``) and LightGBM's ``Booster.predict``
for each request and applies a threshold policy. Bidirectional streaming is
not supported by Serve's gRPC proxy, so ``AuthorizeStream`` is absent here.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from creditauth.v1 import authorization_pb2 as pb

SERVICER = "creditauth.v1.authorization_pb2_grpc.add_CreditAuthorizationServicer_to_server"


class NaiveScorer:
    def __init__(self, data_dir: str, online_store: str) -> None:
        import lightgbm as lgb

        from features.feast_repo import open_store
        from features.settings import FeatureSettings
        from features.training import MODEL_COLUMNS

        settings = FeatureSettings(data_dir=Path(data_dir), online_store=online_store)
        self._store = open_store(settings)
        version = (settings.data_dir / "models" / "LATEST").read_text().strip()
        self._booster = lgb.Booster(model_file=str(settings.data_dir / "models" / version / "model.txt"))
        self._version = version
        from features import catalog

        stored = {f for v in catalog.ALL_VIEWS for f in v.field_names}
        self._refs = [f"{v.name}:{f}" for v in catalog.ALL_VIEWS for f in v.field_names if f in MODEL_COLUMNS]
        self._columns = MODEL_COLUMNS
        self._stored = stored

    def _one(self, req: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
        import numpy as np

        row = self._store.get_online_features(features=self._refs, entity_rows=[{"merchant_id": req.merchant_id}])
        values = row.to_dict()
        rev = values.get("rev_mean_30d", [None])[0]
        amount = req.requested_amount.amount_minor / 100.0
        request = {
            "amount_to_revenue": amount / max((rev or 0.0) * 30.0, 1.0) if rev is not None else np.nan,
            "amount_to_declared_revenue": np.nan,
            "term_months": req.term_months,
            "channel_code": req.channel,
            "product_code": req.product,
        }
        inputs = [values[c][0] if c in self._stored else request[c] for c in self._columns]
        x = np.array([[np.nan if v is None else v for v in inputs]], dtype=np.float64)
        pd = float(self._booster.predict(x)[0])
        decision = pb.DECISION_DECLINE if pd >= 0.25 else pb.DECISION_REVIEW if pd >= 0.12 else pb.DECISION_APPROVE
        return pb.AuthorizeResponse(
            application_id=req.application_id,
            decision=decision,
            probability_of_default=pd,
            model_version=self._version,
        )

    def Authorize(self, request: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
        return self._one(request)

    def AuthorizeBatch(self, request: pb.AuthorizeBatchRequest) -> pb.AuthorizeBatchResponse:
        return pb.AuthorizeBatchResponse(responses=[self._one(r) for r in request.requests])


def run_naive(data_dir: Path, online_store: str, port: int, replicas: int = 1) -> Any:
    """Start a local Ray cluster with Serve's gRPC proxy on ``port``; returns when it is up."""
    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, namespace="creditauth-naive")
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": "127.0.0.1", "port": 0},
        grpc_options={"port": port, "grpc_servicer_functions": [SERVICER]},
    )
    app: Any = serve.deployment(NaiveScorer, name="NaiveScorer", num_replicas=replicas, max_ongoing_requests=16)
    # A route prefix exposes the app through the proxy; as the only app it needs no metadata.
    serve.run(app.bind(str(data_dir.resolve()), online_store), name="naive", route_prefix="/")


async def serve_naive(data_dir: Path, online_store: str, port: int) -> None:
    import ray
    from ray import serve

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, run_naive, data_dir, online_store, port)
    print(f"naive: Ray Serve gRPC proxy on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
