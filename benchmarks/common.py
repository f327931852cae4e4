"""Helpers the benchmark scripts share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_report(path: Path, lines: list[str]) -> None:
    """Write a markdown report under ``benchmarks/results`` and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"Wrote {shown}")


def write_json(path: Path, data: Any) -> None:
    """Write a benchmark's figures as JSON beside its report, for the next run or a plot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
