"""BENCHMARKS.md is rewritten a section at a time (``benchmarks/report.py``): a run replaces its
own figures and keeps every hand-written note where it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report

pytestmark = pytest.mark.unit


def section(key: str, title: str, body: str) -> str:
    return f"## {title}\n\n<!-- results:{key} -->\n{body}\n<!-- /results:{key} -->"


def test_a_run_replaces_its_figures_and_keeps_the_notes(tmp_path: Path):
    path = tmp_path / "BENCHMARKS.md"
    parts = [report.HEADER.rstrip("\n"), "## Latest notes\n\nprelude", section("full", "Full", "old full"),
             "## Issue 15 notes\n\nwritten by hand", section("bulk-full", "Bulk", "old bulk"),
             "## Earlier figures\n\ntail"]  # fmt: skip
    path.write_text("\n\n".join(parts) + "\n")
    original = path.read_text()
    report.write_section(path, "bulk-full", "Bulk", "old bulk")
    assert path.read_text() == original  # the same figures: nothing moves
    report.write_section(path, "bulk-full", "Bulk", "new bulk")
    text = path.read_text()
    assert text == original.replace("old bulk", "new bulk")
    assert text.index("written by hand") < text.index("new bulk") < text.index("tail")
