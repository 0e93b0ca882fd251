"""The direct channel: front ends send batches straight to Serve replicas over sockets.

A Serve handle call costs several milliseconds of CPU spread over the caller,
the router and the replica (see docs/benchmarks/serving.md); a batch sent on
an open socket costs tens of microseconds. Replicas stay Ray Serve replicas
(Serve starts, health-checks, scales and stops them); each one also listens on
a socket and registers its address, and front ends keep connections to every
registered replica.

    auth        the handshake: both ends prove the shared secret before any frame (once per connection)
    frames      the wire format: framed ops (SCORE, RESULT, ERROR, PING, INFO), batch payloads
    server      the replica's socket server: dispatches ops to handlers
    connection  one multiplexed socket to one replica
    membership  the replicas a front end is connected to (follows the registry)
    router      picks a replica per call, retries once elsewhere, bounds waits by the deadline
    client      ``DirectBackend``: the ``ScoringBackend`` made of the three above

The socket is locked (docs/security/channel.md): a peer must pass the handshake, frames
are bounded by ``ray.channel_max_frame_bytes`` on both sides, and every batch is checked
(``services.schema.validate``) before a replica scores it.
"""

from services.runtime.channel.client import DirectBackend, static_endpoints
from services.runtime.channel.frames import Op
from services.runtime.channel.server import ChannelServer

__all__ = ["ChannelServer", "DirectBackend", "Op", "static_endpoints"]
