"""Synthetic merchant population: the stand-in for a lender's raw data.

``generate`` writes merchants, raw daily cash-register flows, bureau records and
historical applications with a default outcome drawn from a hidden process, as
parquet, chunk by chunk so memory stays bounded whatever the population size.
``offline`` turns the raw parts into the tables Feast serves, chunk by chunk
(``aggregate`` holds the window statistics, ``tags`` the tag rules).
"""

from features.population.generate import GenerationReport, generate_population
from features.population.offline import build_offline_tables

__all__ = ["GenerationReport", "build_offline_tables", "generate_population"]
