"""Scoring kernels: tree ensembles, scorecards, policy rules and reason codes.

Everything public is re-exported here; the compiled ``_*.pyx`` modules are
private. The package imports only numpy and the standard library.
"""

from __future__ import annotations

from kernels.ensemble import TreeEnsemble
from kernels.errors import (
    InputDtypeError,
    InputShapeError,
    KernelError,
    ModelFormatError,
    SpecError,
    UnsupportedModelError,
)
from kernels.multiclass import MulticlassEnsemble
from kernels.parity import ParityReport, check_parity
from kernels.rules import Condition, PolicyRules, Rule, pack_tags
from kernels.scorecard import Characteristic, Scorecard

__all__ = [
    "Characteristic",
    "Condition",
    "InputDtypeError",
    "InputShapeError",
    "KernelError",
    "ModelFormatError",
    "MulticlassEnsemble",
    "ParityReport",
    "PolicyRules",
    "Rule",
    "Scorecard",
    "SpecError",
    "TreeEnsemble",
    "UnsupportedModelError",
    "check_parity",
    "pack_tags",
]
