"""Credit policy: grades, decisions, limits and prices from a probability of default.

A policy is data (YAML) validated once at load; ``Policy.decide`` applies it
to a whole batch with numpy.
"""

from services.policy.config import PolicyConfig, load_policy
from services.policy.decide import Decisions, Policy, PolicyInputs
from services.schema.currency import CURRENCIES, Currency, currency_index

__all__ = [
    "CURRENCIES",
    "Currency",
    "Decisions",
    "Policy",
    "PolicyConfig",
    "PolicyInputs",
    "currency_index",
    "load_policy",
]
