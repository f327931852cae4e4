"""Segmental SNR: an ``evaluate`` module over ``merit.metrics`` (README.md)."""

from merit.evaluate_metrics import SegmentalSNR  # noqa: F401  (the module's metric)
