"""Helpers the benchmark scripts share."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_report(path: Path, lines: list[str]) -> None:
    """Write a markdown report under ``benchmarks/results`` and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"Wrote {shown}")
