"""Shared by the bench/ scripts: print a table and write it into docs/benchmarks.md.

Each benchmark owns one section of docs/benchmarks.md, between
<!-- bench:NAME --> and <!-- /bench:NAME -->, replaced whole on every run, with the machine it ran on.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

import fcntl

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nWritten by the scripts under `bench/`; each section says the machine it ran "
          "on. Absolute numbers on a shared 2-core machine are noisy: compare the ratios, measured in "
          "one run.\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def load() -> str:
    """The 1-minute load average, as the tables print it beside each row (the machine is shared)."""
    return f"{os.getloadavg()[0]:.1f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(name: str, title: str, body: str, command: str | None = None) -> None:
    """Print body and put it in docs/benchmarks.md under its own section (other sections kept).
    command: what ran, when it is not `python bench/<name>.py` (a script writing several
    sections)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = command or f"python bench/{name}.py"
    section = (f"<!-- bench:{name} -->\n## {title}\n\nMachine: {machine()}; run {stamp} "
               f"(`{command}`).\n\n{body.strip()}\n<!-- /bench:{name} -->")
    print(f"\n{title}\n\n{body.strip()}\n")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    with open(DOC.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = DOC.read_text() if DOC.exists() else HEADER
        pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                             re.S)
        text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
            text.rstrip() + "\n\n" + section + "\n"
        DOC.write_text(text)
