"""Run inside the fresh virtual environment (``python -I venv_check.py``): what is installed,
that the serving stack is absent, that the typed package is there, and one real call."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import uuid

import creditauth_client
import grpc
from creditauth_client import AuthorizationClient, authorize_request, error_details

SERVING = ("ray", "feast", "lightgbm", "services", "creditauth")
absent = {name: importlib.util.find_spec(name) is None for name in SERVING}
package = os.path.dirname(creditauth_client.__file__)
with AuthorizationClient(os.environ["CREDITAUTH_TARGET"], insecure=True) as client:
    answer = client.authorize(authorize_request(f"venv-{uuid.uuid4().hex[:12]}", "M00000001", 2_000_000, "CNY"))
    try:
        client.authorize(authorize_request(f"venv-{uuid.uuid4().hex[:12]}", "M00000001", 2_000_000, "XXX"))
        refusal = None
    except grpc.RpcError as err:
        d = error_details(err)
        refusal = {"code": d.code.name, "reason": d.reason, "fields": [v.field for v in d.field_violations]}
print(json.dumps({
    "absent": absent,
    "distributions": sorted({d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()}),
    "version": creditauth_client.__version__,
    "stubs": sorted(f for f in os.listdir(os.path.join(package, "v1")) if f.endswith(".pyi")),
    "py_typed": os.path.exists(os.path.join(package, "py.typed")),
    "decision": answer.decision,
    "decision_id": answer.decision_id,
    "refusal": refusal,
}))
