"""STOI: an ``evaluate`` module over ``merit.metrics`` (README.md)."""

from merit.evaluate_metrics import STOI  # noqa: F401  (the module's metric)
