"""The gRPC front end: validation, adaptive batching, the three RPCs, health and reflection."""

from services.frontend.server import FrontEnd

__all__ = ["FrontEnd"]
