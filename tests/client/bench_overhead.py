"""What the client's interceptor (deadline + retry bookkeeping) costs per call, against the
bare generated stub on a plain channel, on the scripted loopback server: rounds alternate
A B A B so a shared machine's drift hits both.

    .venv/bin/python -m tests.client.bench_overhead [calls-per-round] [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import grpc

from tests.client import conftest


def _time(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """Wall and CPU (this process: client and server) microseconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


def main(calls: int = 2000, rounds: int = 4) -> None:
    assert conftest.CLIENT_SITE.is_dir()  # importing conftest built creditauth_client onto sys.path
    from creditauth_client import AuthorizationClient, authorize_request
    from creditauth_client.v1 import authorization_pb2_grpc as pb_grpc

    from tests.client.scripted import OK, ScriptedServer

    server = ScriptedServer([OK]).start()
    request = authorize_request("bench", "M00000001", 1000, "CNY")
    bare_channel = grpc.insecure_channel(server.target)
    bare = pb_grpc.CreditAuthorizationStub(bare_channel)
    client = AuthorizationClient(server.target, insecure=True)
    bare.Authorize(request, timeout=5)
    client.authorize(request)  # connect both before timing
    def via_bare() -> object:
        return bare.Authorize(request, timeout=5)

    def via_client() -> object:
        return client.authorize(request)

    results: dict[str, list[tuple[float, float]]] = {"bare stub": [], "client": []}
    for _ in range(rounds):
        results["bare stub"].append(_time(via_bare, calls))
        results["client"].append(_time(via_client, calls))
    client.close()
    bare_channel.close()
    server.stop()
    med = {name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
           for name, r in results.items()}
    for name, (wall, cpu) in med.items():
        print(f"{name:10s} median wall {wall:7.1f} us/call, cpu {cpu:7.1f} us/call")
    print(f"client / bare: wall {med['client'][0] / med['bare stub'][0]:.3f}, "
          f"cpu {med['client'][1] / med['bare stub'][1]:.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
