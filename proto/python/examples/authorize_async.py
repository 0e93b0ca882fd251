"""asyncio: a batch and a stream on one channel.

    CREDITAUTH_TARGET=127.0.0.1:50051 python authorize_async.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

from creditauth_client import AsyncAuthorizationClient, authorize_request
from creditauth_client.v1 import authorization_pb2 as pb


def requests(n: int) -> list[pb.AuthorizeRequest]:
    merchant = os.environ.get("CREDITAUTH_MERCHANT", "M00000001")
    return [authorize_request(f"async-{uuid.uuid4().hex[:12]}", merchant, 500_000 * (i + 1), "CNY") for i in range(n)]


async def main() -> None:
    target = os.environ.get("CREDITAUTH_TARGET", "127.0.0.1:50051")
    async with AsyncAuthorizationClient(target, insecure=True) as client:
        batch = await client.authorize_batch(requests(3), timeout=10)
        # responses[i] answers requests[i]; an item that could not be decided carries `error`.
        print("batch", [pb.Decision.Name(r.decision) if not r.HasField("error") else r.error.field
                        for r in batch.responses])
        streamed = [r async for r in client.authorize_stream(requests(3), timeout=10)]
        print("stream", [pb.Decision.Name(r.decision) for r in streamed])


if __name__ == "__main__":
    asyncio.run(main())
