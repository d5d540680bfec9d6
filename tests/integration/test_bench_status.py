"""Smoke test of bench/status.py: it fills a catalog, times status and metrics, prints."""

from __future__ import annotations

import subprocess
import sys


def test_the_status_benchmark_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.status", "--points", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line}
    for command in ("status", "metrics"):
        base, many, ratio = (float(value) for value in rows[command])
        assert base > 0 and many > 0 and ratio > 0
    assert "catalog of 20 RPs" in done.stdout
