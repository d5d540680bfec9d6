"""The benchmarks still run and print every figure they promise (so their code cannot rot).

``python -m bench --quick --cuts 1 --only stall``, then ``--only mover``, run both on the
real testbed, one cut per stall method and 64 MiB for the mover; the figures themselves
are not judged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench.mover import FIGURES
from bench.stall import HAND_PAR, HAND_SEQ, HOOKS, METHODS, PLAIN

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"


def _row(output: str, label: str, numbers: int) -> list[float]:
    """The numbers of the table row that starts with ``label`` (exactly ``numbers`` of them)."""
    pattern = re.escape(label) + r"\s+" + r"\s+".join([f"({NUMBER})"] * numbers) + r"\s*$"
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no row {label!r} with {numbers} figures in:\n{output}"
    return [float(value) for value in match.groups()]


@pytest.mark.root
@pytest.mark.restic
def test_both_benchmarks_print_every_figure() -> None:
    """(The database writers' benchmark, which ``python -m bench`` also runs, has its own
    test: test_bench_writers.)"""
    out = ""
    for only in ("stall", "mover"):
        done = subprocess.run(
            [sys.executable, "-m", "bench", "--quick", "--cuts", "1", "--only", only],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        out += done.stdout

    # stall: n, failed, p50, p99, mean, and the two ratios against the parallel hand-made cut
    rows = {method: _row(out, method, 7) for method in METHODS}
    assert all(row[:2] == [1, 0] for row in rows.values())
    assert all(row[2] > 0 for row in rows.values()), "a stall of 0 ms was measured"
    assert rows[HAND_PAR][5:] == [1.0, 1.0]
    for method in (HAND_SEQ, HAND_PAR):
        assert re.search(re.escape(method) + r", from the last FIFREEZE returning.*p99 ", out)
    # the hooked cut: its write stall and its application pause, side by side (no ratio)
    for figure in ("write stall", "application pause"):
        row = _row(out, f"{HOOKS}: {figure}", 5)
        assert row[:2] == [1, 0] and row[2] > 0, figure
    for method in (HOOKS, PLAIN):
        assert re.search(re.escape(method) + r": level \w+; whole cut incl\. uploads", out)

    # mover: cleancut seconds, bare restic seconds, ratio
    for label in FIGURES:
        ours, bare, ratio = _row(out, label, 3)
        assert ours > 0 and bare > 0
        assert ratio == pytest.approx(ours / bare, rel=0.05, abs=0.02)  # from rounded seconds

    # where the figures came from, once per benchmark
    for heading, count in (("kernel ", 2), ("restic ", 2), ("fs ", 6), ("reproduce: ", 2)):
        assert len(re.findall(f"^{heading}", out, re.MULTILINE)) == count, heading
    assert "xfs" in out and "ext4" in out
