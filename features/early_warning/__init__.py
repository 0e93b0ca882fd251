"""Early warnings: each merchant against its own baseline, segment shocks, proposed controls.

``baseline`` computes the robust z-score of a merchant's last week against its own profile
(materialized as the ``merchant_baseline`` view, usable in policy rules), ``usual`` a
merchant's usual rate of credit applications (the same view; the policy's
``velocity.above_usual`` compares the live counts with it); ``scan`` flags
merchants and regions/industries whose revenue dropped suddenly; ``proposals`` turns the
flagged segments into controls an operator applies with one command; ``evaluate`` scores
the scan against the synthetic world's hidden shocks (import it from there: it needs the
generator). docs/warnings.md.
"""

from features.early_warning.baseline import BASELINE_COLUMNS, baseline_frame, baseline_table
from features.early_warning.proposals import Proposal, propose, write_proposals
from features.early_warning.scan import ScanResult, Thresholds, scan, write_warnings
from features.early_warning.usual import USUAL_COLUMNS, usual_rate_frame

__all__ = [
    "BASELINE_COLUMNS", "USUAL_COLUMNS", "Proposal", "ScanResult", "Thresholds", "baseline_frame", "baseline_table",
    "propose", "scan", "usual_rate_frame", "write_proposals", "write_warnings",
]
