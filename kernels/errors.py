"""One exception hierarchy for the whole ``kernels`` package.

Callers catch :class:`KernelError` for "anything the kernels refused"; the
subclasses that also derive from a builtin (``ValueError``/``TypeError``) let
generic code that already catches those keep working.
"""

from __future__ import annotations

__all__ = [
    "InputDtypeError",
    "InputShapeError",
    "KernelError",
    "ModelFormatError",
    "SpecError",
    "UnsupportedModelError",
]


class KernelError(Exception):
    """Base class of every error raised by ``kernels``."""


class UnsupportedModelError(KernelError):
    """The model is well formed but uses a feature the kernels do not implement.

    Raised at load time so that a model is never silently mis-scored.
    """


class ModelFormatError(KernelError, ValueError):
    """The model text/JSON is malformed or internally inconsistent."""


class InputShapeError(KernelError, ValueError):
    """Feature input has the wrong number of dimensions, rows or features."""


class InputDtypeError(KernelError, TypeError):
    """Feature input is not a float32/float64 C-contiguous numpy array."""


class SpecError(KernelError, ValueError):
    """A scorecard or policy-rule specification failed validation."""
