"""The direct channel: front ends send batches straight to Serve replicas over sockets.

A Serve handle call costs several milliseconds of CPU spread over the caller,
the router and the replica (see docs/benchmarks/serving.md); a batch sent on
an open socket costs tens of microseconds. Replicas stay Ray Serve replicas
(Serve starts, health-checks, scales and stops them); each one also listens on
a socket and registers its address, and front ends keep connections to every
registered replica.
"""

from services.runtime.channel.client import DirectBackend
from services.runtime.channel.server import ChannelServer

__all__ = ["ChannelServer", "DirectBackend"]
