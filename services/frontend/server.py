"""A grpc.aio server hosting CreditAuthorization, health and reflection.

Graceful drain: ``stop`` flips health to NOT_SERVING, refuses new work,
lets in-flight RPCs finish for up to ``drain_timeout_s``, then stops.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from creditauth.v1 import authorization_pb2 as pb
from services.frontend.batcher import Batcher
from services.frontend.servicer import CreditAuthorizationServicer, prepare
from services.runtime.backend import ScoringBackend
from services.settings import ServingSettings
from services.telemetry import NullTelemetry

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CreditAuthorization"].full_name


class FrontEnd:
    def __init__(
        self, backend: ScoringBackend, settings: ServingSettings, telemetry: NullTelemetry | None = None
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._tel = telemetry or NullTelemetry()
        self.batcher = Batcher(
            backend,
            max_batch=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_inflight=settings.max_inflight_batches,
            max_queue=settings.max_queue,
            max_queue_wait_s=settings.max_queue_wait_ms / 1000.0,
            telemetry=self._tel,
            prepare=prepare,
        )
        self._tel.watch_queue(lambda: self.batcher.queued)
        self._server = grpc.aio.server(
            options=[
                # Several front-end processes share one port (the kernel balances).
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # Clients re-resolve now and then, so new front ends get traffic after a scale-out.
                ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(settings.drain_timeout_s * 1000)),
            ]
        )
        self._monitor: asyncio.Task[None] | None = None
        self._draining = False
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0

    async def start(self) -> int:
        self.batcher.start()
        servicer = CreditAuthorizationServicer(self.batcher, self._settings, self._tel)
        self._server.add_generic_rpc_handlers((servicer.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        address = f"{self._settings.host}:{self._settings.port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self._server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._monitor = asyncio.ensure_future(self._watch_backend())
        log.info("listening on %s:%d", self._settings.host, self.port)
        return self.port

    async def _watch_backend(self) -> None:
        """NOT_SERVING while no replica is reachable, so load balancers route around us."""
        serving = True
        while not self._draining:
            await asyncio.sleep(1.0)
            ok = self._backend.healthy()
            if ok != serving and not self._draining:
                serving = ok
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            result = self._health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self) -> None:
        """Drain: NOT_SERVING, refuse new work, finish what is in flight, then stop.

        The server keeps answering health checks while the batcher drains, so
        probes and load balancers see NOT_SERVING rather than a closed port.
        """
        self._draining = True
        if self._monitor is not None:
            self._monitor.cancel()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        timeout = self._settings.drain_timeout_s
        await self.batcher.close(timeout)
        # Whatever is still open (streams mid-window) gets a short grace, then stops.
        await self._server.stop(grace=min(2.0, timeout))
        await self._backend.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()
