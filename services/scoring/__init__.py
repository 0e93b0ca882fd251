"""Scoring replicas: batched feature read -> kernel -> policy, behind a Ray Serve deployment."""

from services.scoring.batch import RequestBatch, ResponseBatch
from services.scoring.engine import ScoringEngine

__all__ = ["RequestBatch", "ResponseBatch", "ScoringEngine"]
