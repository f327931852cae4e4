"""SI-SDR: an ``evaluate`` module over ``merit.metrics`` (README.md)."""

from merit.evaluate_metrics import SISDR  # noqa: F401  (the module's metric)
