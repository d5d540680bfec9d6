"""Recovery time read from a PostgreSQL log (``log_line_prefix = '%m '``)."""

from __future__ import annotations

import pytest

from cleancut.writers.pgserver import recovery_seconds_in_log

BACKUP_RECOVERY = """\
2026-12-02 14:24:30.490 UTC LOG:  starting PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64
2026-12-02 14:24:30.496 UTC LOG:  listening on Unix socket "/run/x/.s.PGSQL.35233"
2026-12-02 14:24:30.500 UTC LOG:  database system was interrupted;
2026-12-02 14:24:30.641 UTC LOG:  starting backup recovery with redo LSN 0/2000028
2026-12-02 14:24:30.644 UTC LOG:  redo starts at 0/2000028
2026-12-02 14:24:30.644 UTC LOG:  consistent recovery state reached at 0/2001DE0
2026-12-02 14:24:30.644 UTC LOG:  redo done at 0/2001DE0 system usage: CPU: user: 0.00 s
2026-12-02 14:24:30.646 UTC LOG:  checkpoint starting: end-of-recovery immediate wait
2026-12-02 14:24:30.652 UTC LOG:  checkpoint complete: wrote 5 buffers (0.0%)
2026-12-02 14:24:30.658 UTC LOG:  database system is ready to accept connections
"""

CRASH_RECOVERY = """\
2026-12-02 10:00:00.000 UTC LOG:  starting PostgreSQL 15.18
2026-12-02 10:00:00.100 UTC LOG:  database system was not properly shut down; automatic recovery
2026-12-02 10:00:00.200 UTC LOG:  redo starts at 0/1000000
2026-12-02 10:00:02.600 UTC LOG:  redo done at 0/5000000 system usage: CPU: user: 1.00 s
2026-12-02 10:00:03.100 UTC LOG:  database system is ready to accept connections
"""

CLEAN_START = """\
2026-12-02 09:00:00.000 UTC LOG:  starting PostgreSQL 15.18
2026-12-02 09:00:00.010 UTC LOG:  database system was shut down at 2026-12-02 08:59:59 UTC
2026-12-02 09:00:00.020 UTC LOG:  database system is ready to accept connections
"""


def test_backup_recovery_runs_from_the_interruption_to_ready() -> None:
    assert recovery_seconds_in_log(BACKUP_RECOVERY) == pytest.approx(0.158)


def test_crash_recovery_is_measured_too() -> None:
    assert recovery_seconds_in_log(CRASH_RECOVERY) == pytest.approx(3.0)


def test_a_clean_start_had_no_recovery() -> None:
    assert recovery_seconds_in_log(CLEAN_START) is None
    assert recovery_seconds_in_log("") is None


def test_only_the_last_start_counts() -> None:
    assert recovery_seconds_in_log(CRASH_RECOVERY + CLEAN_START) is None
    assert recovery_seconds_in_log(CLEAN_START + CRASH_RECOVERY) == pytest.approx(3.0)


def test_a_recovery_that_never_got_ready_ends_at_redo_done() -> None:
    failed = "\n".join(CRASH_RECOVERY.splitlines()[:4]) + (
        "\n2026-12-02 10:00:02.700 UTC FATAL:  could not write init file\n"
    )
    assert recovery_seconds_in_log(failed) == pytest.approx(2.5)


def test_a_recovery_that_never_finished_is_unknown() -> None:
    broken = "\n".join(BACKUP_RECOVERY.splitlines()[:5]) + (
        "\n2026-12-02 14:24:30.700 UTC FATAL:  WAL ends before end of online backup\n"
    )
    assert recovery_seconds_in_log(broken) is None


def test_lines_without_a_timestamp_are_skipped() -> None:
    noisy = BACKUP_RECOVERY.replace(
        "2026-12-02 14:24:30.496 UTC LOG:  listening",
        'postgres: could not write external PID file "": No such file\n'
        "2026-12-02 14:24:30.496 UTC LOG:  listening",
    )
    assert recovery_seconds_in_log(noisy) == pytest.approx(0.158)
