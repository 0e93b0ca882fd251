"""The decision log: every item a replica answers or refuses, on record (docs/decision-log.md).

Kept light: ``services.settings`` imports the settings from here, so the writer (and
pyarrow) load only where a log is opened (``services.decisionlog.writer.open_log``).
"""

from services.decisionlog.settings import DecisionLogSettings

__all__ = ["DecisionLogSettings"]
