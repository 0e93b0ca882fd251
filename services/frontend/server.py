"""grpc.aio servers hosting CreditAuthorization, health and reflection, one per listener.

Secure by default: the main listener (``serving.host:port``) needs ``security.tls`` unless
``security.plaintext`` says otherwise. Further listeners (``security.listeners``) serve a
chosen subset, e.g. plaintext health on the pod's address for the kubelet while callers
use mutual TLS. Every listener bounds what it reads: a receive limit sized to the largest
allowed batch, and at most ``max_concurrent_rpcs`` calls at once.

Overload (``limits``, ``services.frontend.admission``): gRPC holds at most
``max_pending_hard`` calls the event loop has not taken yet (past that it answers
``CANCELLED`` itself, at no cost to the loop), and the servicer admits a call only while
the loop keeps up and fewer than ``max_calls`` are in flight (else ``RESOURCE_EXHAUSTED``
with a ``RetryInfo``).

Health has two meanings, under separate service names of ``grpc.health.v1``:

- **liveness** (``LIVENESS_SERVICE``, "liveness"): the process and its event loop answer
  (the health servicer runs on that loop). SERVING from start until the drain is over,
  whatever the replicas or stores do, so a Ray or Redis outage never restarts front ends.
- **readiness** (the overall ``""`` and ``creditauth.v1.CreditAuthorization``): follows
  the backend (``backend.healthy()``: a replica to send a batch to) and, where given,
  ``ready`` (e.g. the in-process engine's stores); NOT_SERVING while draining, so load
  balancers route around this front end.

Graceful drain: ``stop`` flips readiness to NOT_SERVING, refuses new work, lets in-flight
RPCs finish for up to ``drain_timeout_s``, then reports liveness NOT_SERVING and stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from creditauth.v1 import authorization_pb2 as pb
from services.auth import Gate, Listener, ReloadingCredentials, SecuritySettings, server_credentials
from services.errors import ConfigError
from services.frontend.admission import Admission, Limits
from services.frontend.batcher import Batcher
from services.frontend.controls import SERVICE as CONTROLS_SERVICE
from services.frontend.controls import ControlsServicer
from services.frontend.servicer import CreditAuthorizationServicer, prepare, receive_limit
from services.runtime.backend import ScoringBackend
from services.settings import ServingSettings
from services.telemetry import NullTelemetry

if TYPE_CHECKING:
    from services.decisionlog.refusals import RefusalLog

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CreditAuthorization"].full_name
LIVENESS_SERVICE = "liveness"
READINESS_SERVICES = ("", SERVICE_NAME)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FrontEnd:
    def __init__(
        self,
        backend: ScoringBackend,
        settings: ServingSettings,
        security: SecuritySettings,
        telemetry: NullTelemetry | None = None,
        *,
        ready: Callable[[], bool] | None = None,
        health_interval_s: float = 1.0,
        controls: ControlsServicer | None = None,
        refusals: RefusalLog | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._refusals = refusals  # items refused here go on record; closed (flushed) by stop
        self._controls = controls  # the admin service, served where CreditAuthorization is
        self._settings = settings
        self._ready = ready
        self._health_interval_s = health_interval_s
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
        self._tel.watch_ready(self._readiness)
        # Overload is refused before it queues unseen (services/frontend/admission.py).
        self.limits = limits or Limits.of(settings)
        self.admission = Admission(self.limits, queue_wait=self.batcher.expected_wait_s)
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
                # The backlog gRPC holds before the loop takes a call: bounded (services.frontend.admission).
                *self.limits.grpc_options(),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )

    async def start(self) -> int:
        refusal = self._security.refusal()
        if refusal is not None:
            raise ConfigError(f"front end: {refusal}")
        self.batcher.start()
        self.admission.start()
        servicer = CreditAuthorizationServicer(
            self.batcher, self._settings, Gate(self._security), self._tel, self._refusals, admission=self.admission
        )
        for listener in self._listeners():
            self.ports.append(await self._listen(listener, servicer))
        self.port = self.ports[0]
        await self._set_health(_SERVING, (LIVENESS_SERVICE,))
        await self._set_health(_SERVING if self._readiness() else _NOT_SERVING)
        self._monitor = asyncio.ensure_future(self._watch_backend())
        return self.port

    def _readiness(self) -> bool:
        """A batch sent now has a replica to go to, and whatever ``ready`` watches is up."""
        try:
            return self._backend.healthy() and (self._ready is None or self._ready())
        except Exception as exc:  # a probe that fails says "not ready", it never stops the monitor
            log.warning("readiness check failed: %s", exc)
            return False

    async def _listen(self, listener: Listener, servicer: CreditAuthorizationServicer) -> int:
        server = self._server()
        names = []
        if listener.authorization:
            server.add_generic_rpc_handlers((servicer.handler(),))
            names.append(SERVICE_NAME)
            if self._controls is not None:
                server.add_generic_rpc_handlers((self._controls.handler(),))
                names.append(CONTROLS_SERVICE)
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
        """Readiness NOT_SERVING while no replica (or store) is reachable, so load balancers
        route around us; liveness is not touched (this loop running is what it reports)."""
        serving = self._readiness()
        while not self._draining:
            await asyncio.sleep(self._health_interval_s)  # a periodic check, not a wait for an event
            ok = self._readiness()
            if ok != serving and not self._draining:
                serving = ok
                await self._set_health(_SERVING if ok else _NOT_SERVING)

    async def _set_health(self, status: int, names: tuple[str, ...] = READINESS_SERVICES) -> None:
        for name in names:
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
        await self._set_health(_NOT_SERVING)
        timeout = self._settings.drain_timeout_s
        await self.batcher.close(timeout)
        await self.admission.close()
        log.info("admission: %s", self.admission.stats)
        await self._set_health(_NOT_SERVING, (LIVENESS_SERVICE,))  # drained: the process may go
        # Whatever is still open (streams mid-window) gets a short grace, then stops.
        await asyncio.gather(*(s.stop(grace=min(2.0, timeout)) for s in self._servers))
        await self._backend.close()
        if self._refusals is not None:  # after the servers: no call can refuse anything more
            # close() joins the writer thread and writes what is pending: off the event loop.
            await asyncio.get_running_loop().run_in_executor(None, self._refusals.close)

    async def wait(self) -> None:
        await asyncio.gather(*(s.wait_for_termination() for s in self._servers))
