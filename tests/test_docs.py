"""The docs a newcomer reads in an hour: short, linked, every measured figure in one place.

- README.md at most 1,200 words, docs/*.md at most 20,000 together (`wc -w` counts);
- a measured figure (a number with a unit of time, speed, size or a ratio) appears only in
  docs/benchmarks.md, which the bench/ scripts write: any other page that cites one must cite a
  figure benchmarks.md holds, and should rather link to its section;
- no page and no Python file points at an issue tracker by number: a sentence says why itself;
- every relative link in README.md and docs/*.md reaches a file, and its #anchor a heading there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
PAGES = [README, *DOCS]

README_WORDS = 1_200
DOCS_WORDS = 20_000

# A measured figure: a number (digits, thousands commas, decimals, an optional k/M/B multiplier)
# followed by a unit of time, speed, size or ratio. Settings and limits are written so that they do
# not match ("36 hours", "0.10 (a tenth)", "thirty seconds", `80Gi`): "percent", "hours", "minutes",
# "seconds", "days" and "bytes" are not units here, so a setting in words is never taken for a
# measurement.
NUMBER = r"(?<![\w.@/-])\d{1,3}(?:,\d{3})*(?:\.\d+)?(?:\s?[kMB](?=\s?[a-zA-Z/]))?"
UNIT = (r"(?:ms|µs|us|s|x|×|%|KB|KiB|MB|MiB|GB|GiB|TB|TiB"
        r"|req/s|requests/s|events/s|users/s|rows/s|items/s|/s)")
FIGURE = re.compile(rf"({NUMBER})\s?({UNIT})(?!\w)")
# A ranking metric with its value (NDCG@20 0.189, recall 0.145): a measured quality figure.
METRIC = re.compile(r"\b(?:ndcg|recall|precision|map|hit rate|coverage)(?:@\d+)?:?\s+(\d\.\d+)",
                    re.I)
ISSUE = re.compile(r"\bissues?\s+#?\d", re.I)
GENERATED = re.compile(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", re.S)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def words(path: Path) -> int:
    return len(path.read_text().split())


def figures(text: str) -> set[str]:
    """Each measured figure, normalised (no spaces, × as x), and each metric value."""
    found = {(number + unit).replace(" ", "").replace("×", "x")
             for number, unit in FIGURE.findall(text)}
    return found | {f"metric:{value}" for value in METRIC.findall(text)}


def prose(path: Path) -> str:
    """A page without the sections the bench scripts write (those are checked through the
    scripts themselves, which are Python files)."""
    return GENERATED.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped (letters,
    digits, spaces, '-' and '_' kept), spaces to '-', a repeated anchor suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_readme_is_at_most_1200_words():
    assert words(README) <= README_WORDS, f"README.md has {words(README)} words"


def test_docs_are_at_most_20000_words_together():
    counts = {path.name: words(path) for path in DOCS}
    assert sum(counts.values()) <= DOCS_WORDS, counts


def test_figures_are_cited_only_from_benchmarks():
    measured = figures(BENCHMARKS.read_text())
    copied = {path.relative_to(ROOT).as_posix(): sorted(figures(path.read_text()) - measured)
              for path in PAGES if path != BENCHMARKS}
    assert {page: found for page, found in copied.items() if found} == {}


def test_the_figure_pattern_tells_measurements_from_settings():
    measured = ("3.9 s", "1.33M events/s", "11.1x", "11.1×", "p99 2.5 ms", "1,042 MiB", "27k users/s",
                "NDCG@20 0.189", "precision 1.000", "+6.3%", "510k rows/s", "0.5 GB")
    settings = ("36 hours", "60 days", "top 20", "0.10 (a tenth)", "thirty seconds", "`80Gi`",
                "2026-11-21", "10.20.0.0/16", "ten percent", "65,534 bytes", "v1.2 s", "p99",
                "factors 64", "1M users x 20,000 items", "@20 items", "CUDA 13")
    assert all(figures(text) for text in measured), [t for t in measured if not figures(t)]
    assert not any(figures(text) for text in settings), [t for t in settings if figures(t)]


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--", *patterns], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [ROOT / name for name in out.split("\0") if name]


def test_no_page_or_python_file_names_an_issue_by_number():
    files = sorted({*PAGES, *tracked("*.py", "*.md", "*.yaml", "*.yml", "Makefile")})
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in files if path.exists()
             for n, line in enumerate(prose(path).splitlines(), 1) if ISSUE.search(line)]
    assert found == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_reach_a_file_and_a_heading(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading of {file.name} gives #{anchor}")
    assert broken == []
