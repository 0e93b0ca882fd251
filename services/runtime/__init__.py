"""How batches get scored: in process, or on Ray Serve replicas over the direct channel or a handle.

``ScoringBackend`` is what the front end talks to; ``open_backend`` picks the one the
settings ask for (``serving.channel``). Only ``services.runtime.seam`` imports Ray;
nothing here imports the front end (the composition root, ``services.stack``, joins them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.runtime.backend import LocalBackend, ScoringBackend

if TYPE_CHECKING:
    from services.settings import Settings

__all__ = ["LocalBackend", "ScoringBackend", "open_backend"]


def open_backend(settings: Settings) -> ScoringBackend:
    """The backend for ``settings.serving.channel``, not yet started (``await backend.start()``).

    Blocks (the local engine loads its model and store; the Ray backends look up the
    app): call it off the event loop. The Ray backends need the cluster joined and the
    app deployed (``services.runtime.seam``). Imports are deferred so a process that
    scores locally never loads the seam or the channel.
    """
    channel = settings.serving.channel
    if channel == "local":
        from services.scoring.swap import serving_engine

        return LocalBackend(serving_engine(settings))
    if channel == "handle":
        from services.runtime.seam import RayServeBackend

        return RayServeBackend(settings)
    from services.runtime.channel import DirectBackend
    from services.runtime.channel.auth import resolve_secret
    from services.runtime.seam import endpoint_source

    return DirectBackend(
        endpoint_source(settings),
        secret=resolve_secret(settings.ray, "front end"),
        max_frame=settings.ray.channel_max_frame_bytes,
    )
