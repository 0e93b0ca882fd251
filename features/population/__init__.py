"""Synthetic merchant population: the stand-in for a lender's raw data.

``generate`` writes merchants, raw daily cash-register flows, bureau records and
historical applications with a default outcome drawn from a hidden process, as
parquet, chunk by chunk so memory stays bounded whatever the population size.
``aggregate`` turns the raw flows into the window features Feast serves.
"""

from features.population.aggregate import build_offline_tables
from features.population.generate import GenerationReport, generate_population

__all__ = ["GenerationReport", "build_offline_tables", "generate_population"]
