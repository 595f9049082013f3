"""docs/benchmarks.md, written by the benchmark scripts: one section per script, each
replaced whole and atomically by the next run of its script, with the date, the revision,
the machine and its load (scripts/benchmark_sgd.py, scripts/benchmark_ode.py,
scripts/gpu_check.py ``--markdown``)."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import atomic_path
from .paths import PROJECT_ROOT

ROOT = PROJECT_ROOT

DOC = ROOT / "docs" / "benchmarks.md"
SECTIONS = ("benchmark_sgd", "benchmark_ode", "gpu_check")  # their order in the file
HEADER = """# Benchmarks

Generated: do not edit by hand. Each section is written whole by one run of its script,

    python scripts/benchmark_sgd.py --markdown
    python scripts/benchmark_ode.py --markdown
    python scripts/gpu_check.py --markdown      # on a CUDA machine only

and replaced by the next run of the same script; the other sections stay as they are (text
outside the sections is not kept). A section holds the numbers of one run only, each against
a bound or baseline measured in that same run, with the date, revision, machine and load it
ran under. Absolute timings depend on the machine and its load; the ratios within a section
do so far less.
"""
_MARK = re.compile(r"<!-- (\w+): begin -->\n.*?<!-- \1: end -->\n?", re.DOTALL)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, or '?' where the OS has none."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def revision() -> str:
    """The git revision of the tree, marked when it has uncommitted changes."""
    try:
        head, dirty = _git("rev-parse", "--short", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head} with uncommitted changes" if dirty else head


@dataclass
class RunInfo:
    """What a section states besides its tables: when, what code, which machine, which command.
    Built at the start of a run (:meth:`start`), so the load average before the run is kept."""

    script: str
    argv: list[str]
    date: str
    revision: str
    load_start: str

    @classmethod
    def start(cls, script: str, argv: Sequence[str] | None) -> RunInfo:
        argv = list(sys.argv[1:] if argv is None else argv)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return cls(script, argv, now, revision(), load_average())

    @property
    def command(self) -> str:
        return shlex.join(["python", f"scripts/{self.script}.py", *self.argv])

    def lines(self, device: str = "") -> list[str]:
        cores = os.cpu_count()
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
        machine = f"{cpu_model()}, {cores} cores ({usable} usable), torch {torch.__version__}"
        return [
            f"- date: {self.date}",
            f"- revision: {self.revision}",
            f"- machine: {machine}{device}; {torch.get_num_threads()} torch thread(s)",
            f"- load average (1 / 5 / 15 min): {self.load_start} at the start, {load_average()} at the end",
            f"- command: `{self.command}`",
        ]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` holds one of 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in [headers, rule, *rows])


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "    ") -> str:
    """The same table as aligned plain text, for the console."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        cells = [f"{str(x):<{w}}" if i == 0 else f"{str(x):>{w}}" for i, (x, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells))
    return "\n".join(lines)


def section(name: str, title: str, info: RunInfo, body: str, device: str = "") -> str:
    """The text of one section, markers included."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; one of {SECTIONS}")
    parts = [
        f"<!-- {name}: begin -->",
        f"## {title}",
        "",
        *info.lines(device),
        "",
        body.strip(),
        f"<!-- {name}: end -->",
    ]
    return "\n".join(parts) + "\n"


def write_section(path: str | os.PathLike, name: str, text: str) -> None:
    """Put section ``name`` (the text of :func:`section`) into the file at ``path``,
    replacing the one of that name and keeping the others, in :data:`SECTIONS` order under
    :data:`HEADER`. Written atomically (a temporary file renamed over it), so a reader or an
    interrupted run never sees a half-written file."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    found = {m.group(1): m.group(0).rstrip("\n") + "\n" for m in _MARK.finditer(old)}
    found[name] = text
    order = [s for s in SECTIONS if s in found] + [s for s in found if s not in SECTIONS]
    with atomic_path(path) as tmp:
        tmp.write_text(HEADER + "".join("\n" + found[s] for s in order), encoding="utf-8")


def read_sections(path: str | os.PathLike) -> dict[str, str]:
    """The sections of a file written by :func:`write_section`, by name."""
    return {m.group(1): m.group(0) for m in _MARK.finditer(Path(path).read_text(encoding="utf-8"))}


# ----- the setting ----------------------------------------------------------------------------
