"""Model lifecycle: versioned, parity-gated artifacts (``artifact``) and training (``train``).

Only the artifact loader is on the serving path; ``services.models.train`` (LightGBM on the
offline tables, polars) is imported by name where a model is trained.
"""

from services.models.artifact import ModelArtifact, load_artifact, models_dir

__all__ = ["ModelArtifact", "load_artifact", "models_dir"]
