"""The writer benchmarks still run and print every figure they promise (so their code
cannot rot).

``python -m bench.writers --quick`` runs both on real servers and loop-mounted disks: the
write stall of each writer against fsfreeze alone (two rounds of six methods) and the RTO
of a restored PostgreSQL, ``pg_backup_start`` against a crash-consistent snapshot (two
drills each). Every figure must be a number above zero in its row; the figures
themselves are not judged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench import pgrto, writers

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"


def _row(output: str, label: str, numbers: int) -> list[float]:
    """The numbers of the table row that starts with ``label`` (exactly ``numbers`` of them)."""
    pattern = r"^" + re.escape(label) + r"\s+" + r"\s+".join([f"({NUMBER})"] * numbers) + r"\s*$"
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no row {label!r} with {numbers} figures in:\n{output}"
    return [float(value) for value in match.groups()]


def _assert_ratios(ratios: list[float], figures: list[float], base: list[float]) -> None:
    """p50/base and p99/base, from figures rounded to their printed digits."""
    for ratio, figure, of in zip(ratios, figures, base, strict=True):
        assert ratio == pytest.approx(figure / of, rel=0.05, abs=0.02)


@pytest.mark.root
@pytest.mark.restic
def test_the_writer_benchmarks_print_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.writers", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    cuts = writers.QUICK_CUTS

    # stall, the guest's measure: n, failed, p50, p99, mean, then p50/base and p99/base;
    # the client's: n, p50, p99, mean, p50/base, p99/base
    guest = {label: _row(out, label, 7) for label in writers.ROWS}
    client = {label: _row(out, label, 6) for label in writers.ROWS}
    for label in writers.ROWS:
        base = writers.label(label.split(",")[0], writers.BASELINE)
        assert guest[label][:2] == [cuts, 0], label
        assert client[label][0] == cuts, label
        assert all(value > 0 for value in guest[label][2:] + client[label][1:]), label
        _assert_ratios(guest[label][5:], guest[label][2:4], guest[base][2:4])
        _assert_ratios(client[label][4:], client[label][1:3], client[base][1:3])
        if label == base:
            assert guest[label][5:] == client[label][4:] == [1.0, 1.0], label
    for label in writers.ROWS:
        level = "filesystem" if label.endswith(writers.BASELINE) else "application"
        assert f"{label}: recovery point level {level}\n" in out, label
    for kind in writers.DISKS:
        assert re.search(rf"^{kind} client: \d+ commits, [1-9]\d*/s$", out, re.MULTILINE), kind

    # RTO: n, failed, p50, p99, mean, p50/base, p99/base, started, amcheck ok;
    # recovery: n, p50, p99, mean, p50/base, p99/base
    rto = {label: _row(out, label, 9) for label in pgrto.ROWS}
    recovery = {label: _row(out, label, 6) for label in pgrto.ROWS}
    for label in pgrto.ROWS:
        assert rto[label][:2] == [cuts, 0] and rto[label][7:] == [cuts, cuts], label
        assert recovery[label][0] == cuts, label
        assert all(value > 0 for value in rto[label][2:7] + recovery[label][1:]), label
        _assert_ratios(rto[label][5:7], rto[label][2:4], rto[pgrto.CRASH][2:4])
        _assert_ratios(recovery[label][4:], recovery[label][1:3], recovery[pgrto.CRASH][1:3])
    assert rto[pgrto.CRASH][5:7] == recovery[pgrto.CRASH][4:] == [1.0, 1.0]
    assert f"{pgrto.WRITER}: every copy started with no manual step and passed" in out
    assert f"{pgrto.CRASH}: every copy started after removing postmaster.pid by hand" in out

    # where the figures came from, once per benchmark
    for heading, count in (("kernel ", 2), ("restic ", 2), ("fs ", 6), ("reproduce: ", 2)):
        assert len(re.findall(f"^{heading}", out, re.MULTILINE)) == count, heading
    assert "xfs" in out and "ext4" in out
