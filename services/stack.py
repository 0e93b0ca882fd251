"""The composition root: the whole serving stack in one process (Ray cluster, Serve app, gRPC front end).

This is the one module that joins the layers (front end, runtime, scoring, telemetry);
the runtime never imports the front end. ``creditauth serve`` runs ``serve_forever``;
the demo and the end-to-end tests use ``Stack`` as an async context manager.

The stack also locks the direct channel for a cluster it runs on this host (no
``ray.address``): replicas listen on 127.0.0.1, and, unless the settings name a secret
or choose plaintext, it writes a fresh random secret (0600, in a temporary directory
removed at exit) and hands its path to the replicas and to its own front ends. On
someone else's cluster it starts only with a secret file or explicit plaintext.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import yaml

from services.decisionlog.refusals import open_refusal_log
from services.frontend import FrontEnd
from services.frontend.controls import open_controls
from services.runtime import open_backend, seam
from services.runtime.channel.auth import read_secret, resolve_secret, write_secret
from services.settings import Settings
from services.telemetry import NullTelemetry, setup

log = logging.getLogger(__name__)


class Stack:
    """Start Ray (local or remote), deploy the scorer, listen for gRPC."""

    def __init__(self, settings: Settings, *, deploy: bool = True) -> None:
        self.settings = settings
        self._deploy = deploy
        self._cluster = "existing"
        self.frontend: FrontEnd | None = None
        self._children: list[subprocess.Popen[bytes]] = []
        self._settings_files: list[Path] = []
        self.telemetry: NullTelemetry | None = None
        self._secret_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        assert self.frontend is not None
        return self.frontend.port

    async def __aenter__(self) -> Stack:
        try:
            return await self._enter()
        except BaseException:
            self._forget_secret()
            raise

    async def _enter(self) -> Stack:
        loop = asyncio.get_running_loop()
        # Ray start-up, deployment and engine loading block: keep them off the event loop.
        if self.settings.serving.channel == "local":
            self._cluster = "none"
        else:
            self.settings = self._lock_channel(self.settings)
            self._cluster = await loop.run_in_executor(None, seam.start_cluster, self.settings)
            if self._deploy:
                await loop.run_in_executor(None, seam.deploy, self.settings)
        backend = await loop.run_in_executor(None, open_backend, self.settings)
        await backend.start()
        self.telemetry = setup(self.settings.telemetry, "creditauth-frontend")
        # The operator-controls admin service, served beside CreditAuthorization.
        controls = await loop.run_in_executor(None, open_controls, self.settings)
        # Items the front end refuses (never sent to a replica) go on record beside the decisions.
        refusals = open_refusal_log(self.settings.decision_log, self.settings.data_dir)
        self.frontend = FrontEnd(
            backend, self.settings.serving, self.settings.security, self.telemetry, controls=controls,
            refusals=refusals,
        )
        await self.frontend.start()
        if self.settings.serving.frontends > 1:
            await loop.run_in_executor(None, self._spawn_frontends)
        return self

    def _lock_channel(self, settings: Settings) -> Settings:
        """The settings with the channel's bind host and secret filled in (see the module doc).

        Refuses (``ConfigError``) before anything starts when neither a secret nor
        plaintext is set and the cluster is not this stack's own.
        """
        ray = settings.ray
        update: dict[str, object] = {}
        local = ray.address is None
        if local and ray.channel_bind_host is None:
            update["channel_bind_host"] = "127.0.0.1"  # one host: nothing outside it needs the socket
        if ray.channel_secret_file is not None:
            read_secret(ray.channel_secret_file)  # an unreadable or short secret fails here, not in a replica
        elif local and not ray.channel_plaintext:
            self._secret_dir = tempfile.TemporaryDirectory(prefix="creditauth-channel-")
            update["channel_secret_file"] = write_secret(Path(self._secret_dir.name))
        elif not ray.channel_plaintext:
            resolve_secret(ray, "creditauth")  # raises, naming the options
        return settings.model_copy(update={"ray": ray.model_copy(update=update)}) if update else settings

    def _forget_secret(self) -> None:
        if self._secret_dir is not None:
            self._secret_dir.cleanup()
            self._secret_dir = None

    def _spawn_frontends(self) -> None:
        """More front-end processes on the same port (SO_REUSEPORT), joining this cluster."""
        assert self.frontend is not None
        address = seam.cluster_address() if self._cluster != "none" else None
        serving = self.settings.serving.model_copy(update={"port": self.frontend.port, "frontends": 1})
        ray = self.settings.ray.model_copy(update={"address": address})
        tel = self.settings.telemetry
        for k in range(1, self.settings.serving.frontends):
            # Each process needs its own scrape port: base, base+1, ...
            port = tel.prometheus_port + k if tel.prometheus_port else 0
            child = self.settings.model_copy(
                update={"serving": serving, "ray": ray, "telemetry": tel.model_copy(update={"prometheus_port": port})}
            )
            fd, name = tempfile.mkstemp(prefix="creditauth-frontend-", suffix=".yaml")
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(child.model_dump(mode="json"), f)
            self._settings_files.append(Path(name))
            self._children.append(
                subprocess.Popen([sys.executable, "-m", "services.cli.main", "frontend", "--config", name])
            )

    def _stop_children(self) -> None:
        for p in self._children:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self._children:
            try:
                p.wait(self.settings.serving.drain_timeout_s + 15)
            except subprocess.TimeoutExpired:
                p.kill()
        for path in self._settings_files:
            path.unlink(missing_ok=True)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._exit()
        finally:
            self._forget_secret()  # after the replicas and front ends that read it are gone

    async def _exit(self) -> None:
        loop = asyncio.get_running_loop()
        # All front ends drain at once: children on SIGTERM, ours right here.
        stopping = loop.run_in_executor(None, self._stop_children)
        if self.frontend is not None:
            await self.frontend.stop()
        await stopping
        if self.telemetry is not None:
            self.telemetry.shutdown()
        if self._cluster == "none":
            return
        if self._cluster == "local":
            await loop.run_in_executor(None, seam.shutdown)
            return
        # Someone else's cluster: remove only the app we deployed (a front end that
        # only joined must never stop Serve for everyone), then leave.
        if self._deploy:
            await loop.run_in_executor(None, seam.undeploy, self.settings)
        if self._cluster == "remote":
            await loop.run_in_executor(None, seam.disconnect)


async def serve_forever(settings: Settings, ready: asyncio.Event | None = None, *, deploy: bool = True) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Stack(settings, deploy=deploy) as stack:
        # Ray's core worker installs its own fatal-signal handlers during start-up,
        # which would kill the process on SIGTERM without a drain: take them back.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("creditauth serving on %s:%d", settings.serving.host, stack.port)
        print(f"creditauth: serving on {settings.serving.host}:{stack.port} (Ctrl-C to stop)", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        print("creditauth: draining ...", flush=True)
