"""Where the services meet Ray: the one seam every Ray call goes through.

``ScoringBackend`` is what the front end talks to. ``LocalBackend`` scores in
process (tests, the no-Ray ceiling); ``RayServeBackend`` sends each batch to
the Serve replicas. Only ``ray_seam`` imports Ray.
"""

from services.runtime.backend import LocalBackend, ScoringBackend

__all__ = ["LocalBackend", "ScoringBackend"]
