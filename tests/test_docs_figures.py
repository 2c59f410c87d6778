"""Figures the README repeats from the docs agree with the tables they come from, and the
README stays a five-minute read."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _table_rows(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.startswith("| ")}


def test_the_verifier_counts_are_the_verifier_tables():
    table = (ROOT / "docs" / "verifiers.md").read_text()
    ours = re.search(r"\| `math` \(ours, the default\) \| (\d+)/120 \|", table)[1]
    theirs = re.search(r"\| `math_verify` \(math-verify [^|]*\| (\d+)/120 \|", table)[1]
    said = re.search(r"on 120 answer forms\s+the two are right on (\d+) and (\d+)", README)
    assert said and said.groups() == (ours, theirs)


def test_the_verdict_gaps_are_the_learning_tables():
    holds = (ROOT / "docs" / "learning.md").read_text().split("## What holds", 1)[1]
    holds = holds.split("\n## ", 1)[0]
    section = README.split("## GFT or verified SFT?", 1)[1].split("\n## ", 1)[0]
    gaps = re.findall(r"(\d+\.\d) points above", section)
    assert gaps, section
    for gap in gaps:
        assert f"by {gap} points" in holds, gap


def test_the_memory_rows_are_the_memory_pages():
    readme = README.split("## Memory", 1)[1].split("\n## ", 1)[0]
    rows = {r for r in _table_rows(readme) if "GB" in r}
    assert rows
    assert rows <= _table_rows((ROOT / "docs" / "memory.md").read_text())


def test_readme_is_a_five_minute_read_with_the_verdict_on_its_first_screens():
    lines = README.splitlines()
    assert len(lines) <= 250
    verdict = next(i for i, line in enumerate(lines) if line.startswith("## GFT or verified SFT"))
    assert verdict < 100  # the first two screens
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    assert "## Changes" not in README
