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
    flat = " ".join(README.split())  # line breaks fall anywhere in a paragraph
    said = re.search(r"on 120 answer forms the two are right on (\d+) and (\d+)", flat)
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


DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_first_commands_time_is_said_alike_everywhere():
    time_md = (ROOT / "docs" / "time.md").read_text()
    measured = re.search(r"\(([\d.]+) s measured, docs/time\.md\)", README)[1]
    assert f"{measured} s for the whole command" in time_md
    minutes = re.search(r"in about ([\d.]+) minutes \(" + re.escape(measured), README)[1]
    assert f"{float(measured) / 60:.1f}" == minutes
    examples = (ROOT / "examples" / "README.md").read_text()
    quick = examples.split("## quickstart.yaml", 1)[1].split("\n## ", 1)[0]
    assert f"about {minutes} minutes" in " ".join(quick.split())


def test_gfts_time_against_sfts_is_the_time_table():
    ratio, gft, sft = re.search(
        r"GFT costs more time: ([\d.]+)x SFT's in the regime \(([\d.]+)\s+against ([\d.]+) minutes",
        " ".join(README.split()),
    ).groups()
    row = next(r for r in _table_rows((ROOT / "docs" / "time.md").read_text())
               if r.startswith("| GFT |"))  # fmt: skip
    assert row.endswith(f"| {gft} | {ratio}x |")
    # The minutes are rounded to 0.1: the ratio lies within what that rounding allows.
    g, f, r = float(gft), float(sft), float(ratio)
    assert (g - 0.05) / (f + 0.05) <= r + 0.05 and (g + 0.05) / (f - 0.05) >= r - 0.05


def test_pointers_lead_somewhere():
    headings = {h.strip() for h in re.findall(r"^## (.+)$", README, re.M)}
    for doc in DOCS:
        text = doc.read_text()
        # `pip install "mlx-gft[...]"` needs the package on PyPI; from a checkout: -e ".[x]"
        assert "mlx-gft[" not in text, doc
        # A README section named in another page exists.
        for name in re.findall(r"README(?:'s|,) \"([^\"]+)\"", text):
            assert name in headings, (doc, name)
        # README anchors.
        for anchor in re.findall(r"\]\(#([\w-]+)\)", text):
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, (doc, anchor)


def test_docs_speak_of_the_project_not_its_work_items():
    for doc in DOCS:
        text = " ".join(doc.read_text().split())
        for phrase in ("the issue", "this session", "the 2.5x goal"):
            assert phrase not in text, (doc, phrase)
