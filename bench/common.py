"""What both benchmarks share: the root check, quantiles, tables and the machine report.

The benchmarks print figures for people (and for the issue's closing note); they assert
nothing about speed. Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cleancut.providers.ficlone import filesystem_of

#: Where the benchmarks build their workspaces: a root-owned folder nobody else can write
#: to (or list), as the hook-security rules require for guest configs.
BENCH_BASE = Path("/var/lib/cleancut/bench")

#: What a reader runs to get the same figures.
REPRODUCE = (
    "as root, from a clone: `make bench` "
    "(or `.venv/bin/python -m bench [--quick] [--only stall|mover|writers|hosts|consistency]`)"
)


def require_root(what: str) -> None:
    """Exit with status 2 and say why unless running as root."""
    if os.geteuid() != 0:
        say(
            f"the {what} benchmark needs root: it makes loop-mounted disk images and freezes "
            "them (losetup, mount, FIFREEZE); run it as root, e.g. `sudo make bench`"
        )
        raise SystemExit(2)


def say(text: str) -> None:
    """A progress line on stderr (figures go to stdout)."""
    print(text, file=sys.stderr, flush=True)


def workspace(prefix: str) -> Path:
    """A fresh folder under :data:`BENCH_BASE` (the caller removes it)."""
    # 0711: others may pass through (database servers run as postgres and mysql and reach
    # their disks below it), not list or write; as cleancut verify's sandbox base
    BENCH_BASE.mkdir(mode=0o711, parents=True, exist_ok=True)
    BENCH_BASE.chmod(0o711)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=BENCH_BASE))
    root.chmod(0o755)
    return root


def write_private(path: Path, text: str) -> None:
    """Write a config file only its owner can read or write (the guest refuses others)."""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


@dataclass(frozen=True)
class Series:
    """One method's measurements in seconds, summarised in milliseconds."""

    name: str
    values: tuple[float, ...]

    def quantile(self, q: int) -> float:
        """The ``q``-th percentile (inclusive method, as the demo's table uses)."""
        ordered = sorted(self.values)
        if len(ordered) == 1:
            return ordered[0]
        return statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]

    @property
    def p50(self) -> float:
        return self.quantile(50)

    @property
    def p99(self) -> float:
        return self.quantile(99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)


def ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{seconds * 1000:.1f}"


def figures(series: Series) -> list[str]:
    """p50, p99 and mean of ``series`` in milliseconds, or dashes when it is empty."""
    if not series.values:
        return ["-", "-", "-"]
    return [ms(series.p50), ms(series.p99), ms(series.mean)]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} not found"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> str:
    try:
        first = Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()[0]
        return f"{int(first.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        return "?"


def machine_report(places: dict[str, Path]) -> str:
    """Kernel, CPU, memory, tool versions and the file system under each named place."""
    lines = [
        f"kernel   {platform.system()} {platform.release()} ({platform.machine()})",
        f"cpu      {_cpu()} x {os.cpu_count()}",
        f"memory   {_memory_gib()}",
        f"os       {_first_line(['sh', '-c', '. /etc/os-release && echo $PRETTY_NAME'])}",
        f"python   {platform.python_version()}",
        f"restic   {_first_line(['restic', 'version'])}",
    ]
    for label, path in places.items():
        mount = filesystem_of(path)
        lines.append(f"fs       {label}: {mount.fstype} ({mount.source} at {mount.mount_point})")
    lines.append(f"reproduce: {REPRODUCE}")
    return "\n".join(lines)
