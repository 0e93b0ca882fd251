"""Model lifecycle: train a LightGBM model, gate it on kernel parity, store a versioned artifact."""

from services.models.artifact import ModelArtifact, load_artifact, models_dir
from services.models.train import TrainReport, train_model

__all__ = ["ModelArtifact", "TrainReport", "load_artifact", "models_dir", "train_model"]
