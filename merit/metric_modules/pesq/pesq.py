"""PESQ: an ``evaluate`` module over ``merit.metrics`` (README.md)."""

from merit.evaluate_metrics import PESQ  # noqa: F401  (the module's metric)
