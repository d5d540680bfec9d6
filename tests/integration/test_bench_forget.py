"""The forget benchmark still runs, prints every figure it promises, and leaves nothing.

``python -m bench.forget --points 3`` takes three real RPs of a three-host application
(copy provider, real restic), forgets two with ``cleancut forget`` and with one ``restic
forget`` per snapshot, and rebuilds the catalog; the figures' structure and the counted
calls are checked, not their speed. Ctrl-C in the middle must still remove the workspace.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench.forget import BASELINE, CLEANCUT, HEADERS, RATIO, REBUILD, SNAPSHOTS_PER_RP

from cleancut.coordinator.runlock import lock_folder

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"
POINTS = 3
BENCH = [sys.executable, "-m", "bench.forget", "--points", str(POINTS)]

pytestmark = [pytest.mark.root, pytest.mark.restic]


def _row(output: str, label: str, numbers: int) -> list[float]:
    """The numbers of the table row that starts with ``label`` (exactly ``numbers``)."""
    pattern = r"^" + re.escape(label) + r"\s+" + r"\s+".join([f"({NUMBER})"] * numbers) + r"\s*$"
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no row {label!r} with {numbers} figures in:\n{output}"
    return [float(value) for value in match.groups()]


def _workspace(stderr: str) -> Path:
    match = re.search(r"^workspace (/\S+)$", stderr, re.MULTILINE)
    assert match, stderr
    return Path(match.group(1))


def _app_lock(workspace: Path) -> Path:
    """The run lock file of the benchmark's application (named after its workspace's app)."""
    configs = list(workspace.glob("*/app.toml"))
    name = re.search(r'^name = "(\S+)"', configs[0].read_text(), re.MULTILINE)
    assert name, configs
    return lock_folder() / f"{name.group(1)}.lock"


def test_the_forget_benchmark_prints_every_figure_and_cleans_up() -> None:
    done = subprocess.run(BENCH, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr}"
    numbers = len(HEADERS) - 1

    assert re.search(r"^forget\s+wall s\s+restic calls\s+restic starts$", out, re.MULTILINE)
    ours = _row(out, CLEANCUT, numbers)
    base = _row(out, BASELINE, numbers)
    ratio = _row(out, RATIO, numbers)
    assert ours[0] > 0 and base[0] > 0
    assert ours[1] > 0 and ours[2] > 0  # counted, not only reported
    assert ours[1] == ours[2] == 3  # list, forget the manifests, forget the members
    assert base[1] == base[2] == (POINTS - 1) * SNAPSHOTS_PER_RP
    assert ours[1] < base[1]
    for got, ratio_of in zip(ratio, zip(base, ours, strict=True), strict=True):
        assert got == pytest.approx(ratio_of[0] / ratio_of[1], rel=0.05, abs=0.06)
    assert "restic starts as counted: snapshots 1, forget 2" in out

    rps, seconds, per_rp, starts = _row(out, REBUILD, 4)
    assert rps == POINTS and seconds > 0 and per_rp > 0
    assert starts == 1 + POINTS  # the listing, then one dump per manifest
    for heading in ("kernel ", "restic   restic", "reproduce: ", "this benchmark: "):
        assert len(re.findall(f"^{heading}", out, re.MULTILINE)) == 1, heading

    assert not _workspace(done.stderr).exists()


def test_ctrl_c_while_taking_points_removes_the_workspace() -> None:
    proc = subprocess.Popen(
        BENCH,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    assert proc.stderr is not None
    try:
        seen = ""
        while "taking " not in seen:
            line = proc.stderr.readline()
            assert line, f"the benchmark ended before taking points: {seen}"
            seen += line
        workspace = _workspace(seen)
        lock = _app_lock(workspace)
        time.sleep(1.5)  # inside the first cut (it takes about three seconds)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, seen + rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert "interrupted" in rest and "workspace was removed" in rest, rest
    assert not workspace.exists()
    assert not lock.exists()
