"""Comparison servers on the same proto, for benchmarks and load-test campaigns.

``echo``: a trivial grpc.aio server that answers without scoring: the ceiling
of Python gRPC on this machine. ``naive``: the stack teams build first (Ray
Serve's gRPC proxy, one deployment calling the Feast SDK and LightGBM per
request), the floor we measure against.
"""
