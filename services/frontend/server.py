"""grpc.aio servers hosting CreditAuthorization, health and reflection, one per listener.

Secure by default: the main listener (``serving.host:port``) needs ``security.tls`` unless
``security.plaintext`` says otherwise. Further listeners (``security.listeners``) serve a
chosen subset, e.g. plaintext health on the pod's address for the kubelet while callers
use mutual TLS. Every listener bounds what it reads: a receive limit sized to the largest
allowed batch, and at most ``max_concurrent_rpcs`` calls at once.

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
from services.auth import Gate, Listener, ReloadingCredentials, SecuritySettings, server_credentials
from services.errors import ConfigError
from services.frontend.batcher import Batcher
from services.frontend.servicer import CreditAuthorizationServicer, prepare, receive_limit
from services.runtime.backend import ScoringBackend
from services.settings import ServingSettings
from services.telemetry import NullTelemetry

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CreditAuthorization"].full_name


class FrontEnd:
    def __init__(
        self,
        backend: ScoringBackend,
        settings: ServingSettings,
        security: SecuritySettings,
        telemetry: NullTelemetry | None = None,
    ) -> None:
        self._settings = settings
        self._security = security
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
        self._servers: list[grpc.aio.Server] = []
        self._monitor: asyncio.Task[None] | None = None
        self._draining = False
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0
        self.ports: list[int] = []  # of every listener, the main one first
        self.tls: list[ReloadingCredentials] = []

    def _listeners(self) -> list[Listener]:
        sec, s = self._security, self._settings
        main = Listener(
            host=s.host, port=s.port, plaintext=sec.plaintext and sec.tls is None, tls=sec.tls,
            authorization=True, health=sec.health, reflection=sec.reflection,
        )
        return [main, *sec.listeners]

    def _server(self) -> grpc.aio.Server:
        s = self._settings
        limit = receive_limit(s.max_batch_request)
        return grpc.aio.server(
            options=[
                # Several front-end processes share one port (the kernel balances).
                ("grpc.so_reuseport", 1),
                # Refused by gRPC from the message's length prefix, before it is buffered.
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # Clients re-resolve now and then, so new front ends get traffic after a scale-out.
                ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(s.drain_timeout_s * 1000)),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )

    async def start(self) -> int:
        refusal = self._security.refusal()
        if refusal is not None:
            raise ConfigError(f"front end: {refusal}")
        self.batcher.start()
        servicer = CreditAuthorizationServicer(self.batcher, self._settings, Gate(self._security), self._tel)
        for listener in self._listeners():
            self.ports.append(await self._listen(listener, servicer))
        self.port = self.ports[0]
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._monitor = asyncio.ensure_future(self._watch_backend())
        return self.port

    async def _listen(self, listener: Listener, servicer: CreditAuthorizationServicer) -> int:
        server = self._server()
        names = []
        if listener.authorization:
            server.add_generic_rpc_handlers((servicer.handler(),))
            names.append(SERVICE_NAME)
        if listener.health:
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            names.append(health.SERVICE_NAME)
        if listener.reflection:
            reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
        address = f"{listener.host}:{listener.port}"
        if listener.tls is not None:
            credentials, reloading = server_credentials(listener.tls)
            self.tls.append(reloading)
            port = server.add_secure_port(address, credentials)
        elif listener.plaintext:
            port = server.add_insecure_port(address)
        else:
            raise ConfigError(f"listener {address}: needs tls or plaintext: true")
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._servers.append(server)
        mode = "mutual TLS" if listener.tls and listener.tls.client_ca_file else "TLS" if listener.tls else "PLAINTEXT"
        if mode == "PLAINTEXT":
            log.warning("listening on %s:%d in PLAINTEXT (security.plaintext: true): anyone who reaches it "
                        "can call %s", listener.host, port, ", ".join(names))
        else:
            log.info("listening on %s:%d (%s): %s", listener.host, port, mode, ", ".join(names))
        return port

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

        The servers keep answering health checks while the batcher drains, so
        probes and load balancers see NOT_SERVING rather than a closed port.
        """
        self._draining = True
        if self._monitor is not None:
            self._monitor.cancel()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        timeout = self._settings.drain_timeout_s
        await self.batcher.close(timeout)
        # Whatever is still open (streams mid-window) gets a short grace, then stops.
        await asyncio.gather(*(s.stop(grace=min(2.0, timeout)) for s in self._servers))
        await self._backend.close()

    async def wait(self) -> None:
        await asyncio.gather(*(s.wait_for_termination() for s in self._servers))
