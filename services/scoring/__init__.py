"""What a scoring replica does: idempotency, the batched feature read, the decider (kernel and
policy) and the records it answers with, behind a Ray Serve deployment."""

from services.schema.records import DecisionBatch, RequestBatch
from services.scoring.engine import ScoringEngine

__all__ = ["DecisionBatch", "RequestBatch", "ScoringEngine"]
