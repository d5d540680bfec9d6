"""Reading MariaDB/MySQL error logs: when crash recovery began and when the server was ready."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from cleancut.writers.mysqllog import LogWatch, last_run, line_time, recovery

CLEAN_START = """\
2026-12-02 14:24:35 0 [Note] Starting MariaDB 10.11.19-MariaDB-log source revision 5 as process 1249
2026-12-02 14:24:35 0 [Note] InnoDB: Compressed tables use zlib 1.2.13
2026-12-02 14:24:35 0 [Note] InnoDB: End of log at LSN=44404
2026-12-02 14:24:35 0 [Note] InnoDB: log sequence number 44404; transaction id 14
2026-12-02 14:24:35 0 [Note] mariadbd: ready for connections.
Version: '10.11.19-MariaDB-0+deb12u1-log'  socket: '/run/x/mysqld.sock'  port: 33061  Debian 12
2026-12-02 14:25:27 0 [Note] mariadbd (initiated by: unknown): Normal shutdown
"""

# a real MariaDB 10.11 start after SIGKILL under load (trimmed)
CRASH_START = """\
2026-12-02 14:25:28 0 [Note] Starting MariaDB 10.11.19-MariaDB-log source revision 5 as process 1422
2026-12-02 14:25:28 0 [Note] InnoDB: Completed initialization of buffer pool
2026-12-02 14:25:28 0 [Note] InnoDB: Starting crash recovery from checkpoint LSN=44404
2026-12-02 14:25:28 0 [Note] InnoDB: End of log at LSN=1701337
2026-12-02 14:25:29 0 [Note] InnoDB: To recover: 152 pages
2026-12-02 14:25:29 0 [Note] InnoDB: Last binlog file './mysql-bin.000001', position 1240310
2026-12-02 14:25:30 0 [Note] Recovering after a crash using mysql-bin
2026-12-02 14:25:31 0 [Note] mariadbd: ready for connections.
Version: '10.11.19-MariaDB-0+deb12u1-log'  socket: '/run/x/mysqld.sock'  port: 33061  Debian 12
"""


def local(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_a_clean_start_ran_no_recovery() -> None:
    assert recovery(CLEAN_START) is None


def test_recovery_runs_from_its_first_line_to_ready_for_connections() -> None:
    found = recovery(CRASH_START)
    assert found is not None
    assert found.began == local("2026-12-02 14:25:28")
    assert found.ready == local("2026-12-02 14:25:31")
    assert found.seconds == 3.0


def test_only_the_last_start_counts() -> None:
    assert recovery(CRASH_START + CLEAN_START) is None
    assert recovery(CLEAN_START + CRASH_START) is not None
    assert last_run(CLEAN_START + CRASH_START)[0].endswith("as process 1422")


def test_a_recovery_still_running_has_no_seconds() -> None:
    running = "\n".join(CRASH_START.splitlines()[:5])
    found = recovery(running)
    assert found is not None and found.ready is None and found.seconds is None


def test_the_final_batch_line_starts_recovery_too() -> None:
    text = (
        "2024-01-01 10:00:00 0 [Note] Starting MariaDB 10.6.1 as process 7\n"
        "2024-01-01 10:00:01 0 [Note] InnoDB: Starting final batch to recover 12 pages\n"
        "2024-01-01 10:00:03 0 [Note] mysqld: ready for connections.\n"
    )
    found = recovery(text)
    assert found is not None and found.seconds == 2.0


def test_mysql8_lines_have_microseconds_and_a_zone() -> None:
    text = (
        "2024-05-01T10:00:00.250000Z 0 [System] [MY-010116] [Server] /usr/sbin/mysqld "
        "(mysqld 8.0.36) starting as process 1\n"
        "2024-05-01T10:00:00.500000Z 1 [System] [MY-013576] [InnoDB] InnoDB initialization "
        "has started.\n"
        "2024-05-01T10:00:00.750000Z 1 [Note] [MY-012550] [InnoDB] Database was not shutdown "
        "normally! Starting crash recovery.\n"
        "2024-05-01T10:00:02.000000Z 0 [System] [MY-010931] [Server] /usr/sbin/mysqld: ready "
        "for connections. Version: '8.0.36'  socket: '/var/run/mysqld/mysqld.sock'  port: 3306\n"
    )
    found = recovery(text)
    assert found is not None and found.seconds == pytest.approx(1.25)


def test_line_times_of_each_format() -> None:
    assert line_time("2026-12-02 14:25:28 0 [Note] x") == local("2026-12-02 14:25:28")
    assert line_time("261202 14:25:28 [Note] x") == local("2026-12-02 14:25:28")
    assert line_time("261202  4:05:06 [Note] x") == local("2026-12-02 04:05:06")
    utc = datetime.fromisoformat("2024-05-01T10:00:00.5+00:00").timestamp()
    assert line_time("2024-05-01T10:00:00.500000Z 0 [System] x") == utc
    assert line_time("2024-05-01T12:00:00.500000+02:00 0 x") == utc
    assert line_time("Version: '10.11.19-MariaDB'") is None


def test_a_recovery_line_without_a_stamp_gives_no_figure() -> None:
    assert recovery("InnoDB: Starting crash recovery\nready for connections\n") is None


def test_the_watch_times_lines_as_they_appear(tmp_path: Path) -> None:
    log = tmp_path / "mariadb.log"
    log.write_text(CRASH_START)  # an earlier run: the watch starts at the end
    watch = LogWatch(log)
    watch.poll()
    assert watch.recovery_seen is None and watch.text == ""
    with log.open("a") as out:
        out.write(CRASH_START.splitlines()[0] + "\n" + CRASH_START.splitlines()[2] + "\n")
        out.write("2026-12-02 14:25:29 0 [Note] Inno")  # half a line: not yet
    watch.poll()
    assert watch.recovery_seen is not None and watch.ready_seen is None
    assert watch.recovery_seconds is None
    time.sleep(0.05)
    with log.open("a") as out:
        out.write("DB: x\n2026-12-02 14:25:31 0 [Note] mariadbd: ready for connections.\n")
    watch.poll()
    assert watch.recovery_seconds is not None and 0.04 < watch.recovery_seconds < 1.0
    assert "InnoDB: x" in watch.text


def test_a_watch_of_a_clean_start_sees_no_recovery(tmp_path: Path) -> None:
    log = tmp_path / "mariadb.log"
    watch = LogWatch(log)  # no log yet
    log.write_text(CLEAN_START)
    watch.poll()
    assert watch.ready_seen is not None and watch.recovery_seconds is None
