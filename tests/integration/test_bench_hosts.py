"""The host-count benchmark still runs and prints every figure it promises.

``python -m bench.hosts --hosts 1,2`` on the real testbed (SSH hosts in network
namespaces, loop-mounted disks, restic), once as it is and once with a link delay; the
figures' structure is checked, not their speed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench.hosts import GOAL, HEADERS, Cut, Sweep, goal_line

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"
DELAY_MS = 50


def _bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.hosts", "--hosts", "1,2", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _row(output: str, label: str) -> list[float]:
    """The figures of the table row ``label``: one per header after the first."""
    numbers = len(HEADERS) - 1
    pattern = re.escape(label) + r"\s+" + r"\s+".join([f"({NUMBER})"] * numbers) + r"\s*$"
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no row {label!r} with {numbers} figures in:\n{output}"
    return [float(value) for value in match.groups()]


def _check_table(out: str, rounds: int) -> dict[str, list[float]]:
    """Both rows complete; the one-host row is its own base (ratios 1.00)."""
    header = re.search(r"^hosts\s+cuts\s+failed\s+cut p50 ms", out, re.MULTILINE)
    assert header, out
    rows = {label: _row(out, label) for label in ("1 host", "2 hosts")}
    for label, row in rows.items():
        cuts, failed, cut, _, stall50, _, stall99, _, hold, _ = row
        assert (cuts, failed) == (rounds, 0), label
        assert cut > 0 and stall50 > 0 and stall99 >= stall50 and hold > 0, label
    assert [rows["1 host"][i] for i in (3, 5, 7)] == [1.0, 1.0, 1.0]
    assert f"goal: {GOAL}: not measured" in out  # no 16-host run here
    assert re.search(rf"levels: filesystem; group-consistent: {2 * rounds} of {2 * rounds}", out)
    for heading in ("kernel ", "restic ", "reproduce: "):
        assert len(re.findall(f"^{heading}", out, re.MULTILINE)) == 1, heading
    assert "xfs" in out and "ext4" in out
    return rows


@pytest.mark.root
@pytest.mark.restic
def test_the_host_count_benchmark_prints_every_figure() -> None:
    out = _bench("--rounds", "2")
    _check_table(out, 2)
    assert "added link delay: none" in out


@pytest.mark.root
@pytest.mark.restic
def test_the_delayed_variant_says_how_and_holds_a_round_trip() -> None:
    out = _bench("--rounds", "1", "--delay-ms", str(DELAY_MS))
    rows = _check_table(out, 1)
    method = re.search(r"^added link delay: (tc netem|TCP relay \(bench/relay\.py\))", out, re.M)
    assert method, out
    # a structural floor, not a speed: with two hosts each stall holds one delayed round
    # trip (freeze answer out, thaw request back), so the delay was really applied
    assert rows["2 hosts"][4] >= 2 * DELAY_MS
    assert f"the delay adds {2 * DELAY_MS} ms to every round trip" in out


def _sweep(hosts: int, stall: float) -> Sweep:
    cut = Cut(1.0, 0.1, (stall,) * hosts, 0.001, 2.0, "filesystem", True)
    return Sweep(hosts, [cut, cut])


def test_the_goal_is_judged_on_the_p50_stall_against_one_host() -> None:
    assert goal_line({1: _sweep(1, 0.04), 16: _sweep(16, 0.06)}).endswith(
        "met (p50 ratio 1.50; p99 ratio 1.50)"
    )
    assert ": not met (p50 ratio 1.75" in goal_line({1: _sweep(1, 0.04), 16: _sweep(16, 0.07)})
    assert "not measured" in goal_line({1: _sweep(1, 0.04), 4: _sweep(4, 0.05)})
