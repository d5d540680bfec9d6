"""The MariaDB writer's password file and error messages (no server needed)."""

from __future__ import annotations

import time
from pathlib import Path

import pymysql
import pytest

from cleancut.config.guest import MariadbDatabase
from cleancut.errors import ConfigError, WriterError
from cleancut.writers import make_writer
from cleancut.writers.mysql import MariadbWriter
from cleancut.writers.mysqlconn import Deadline, describe, error_code, read_password, whole


def secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "shop.pass"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("text", "password"),
    [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),  # one newline only: the rest is the password's
        (" spaced out \n", " spaced out "),
        ("\n", ""),
    ],
)
def test_one_trailing_newline_is_stripped(tmp_path: Path, text: str, password: str) -> None:
    assert read_password("shop", secret(tmp_path, text)) == password


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o601], ids=oct)
def test_a_password_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = secret(tmp_path, "s3cret\n", mode)
    with pytest.raises(ConfigError) as refused:
        read_password("shop", path)
    message = refused.value.message
    assert "databases.shop.password_file" in message
    assert str(path) in message and f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message


def test_a_missing_password_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"databases\.shop\.password_file: cannot read"):
        read_password("shop", tmp_path / "nope")


def test_a_symlinked_or_odd_password_file_is_refused(tmp_path: Path) -> None:
    target = secret(tmp_path, "s3cret\n")
    link = tmp_path / "link.pass"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=r"databases\.shop\.password_file"):
        read_password("shop", link)
    folder = tmp_path / "dir.pass"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_password("shop", folder)


def test_the_writer_refuses_the_file_before_it_connects(tmp_path: Path) -> None:
    path = secret(tmp_path, "s3cret\n", 0o644)
    database = MariadbDatabase(
        kind="mariadb", socket=tmp_path / "no.sock", password_file=path, volume="db"
    )
    writer = make_writer("shop", database)
    assert isinstance(writer, MariadbWriter)
    with pytest.raises(ConfigError, match="readable by group or other"):
        writer.check()
    writer.close()
    writer.close()  # idempotent


def test_a_server_that_is_not_there_is_a_writer_error(tmp_path: Path) -> None:
    database = MariadbDatabase(kind="mysql", socket=tmp_path / "no.sock", volume="db")
    writer = MariadbWriter("shop", database)
    with pytest.raises(WriterError) as failed:
        writer.check()
    message = failed.value.message
    assert message.startswith("mysql database shop: cannot connect to socket")
    assert "databases.shop.socket" in message
    writer.abort()  # nothing held: nothing to do, and it never raises
    writer.close()


def test_errors_are_described_in_one_line() -> None:
    exc = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded; try restarting")
    assert error_code(exc) == 1205
    assert describe(exc) == "error 1205: Lock wait timeout exceeded; try restarting"
    assert error_code(ValueError("x")) is None
    assert describe(ValueError("first\nsecond")) == "first"


def test_timeouts_are_whole_seconds_of_at_least_one() -> None:
    assert [whole(s) for s in (0.2, 1.0, 2.9, 5.0)] == [1, 1, 2, 5]


def test_a_deadline_fires_once_unless_finished_first() -> None:
    fired: list[float] = []
    late = Deadline(0.05, lambda: fired.append(time.monotonic()))
    time.sleep(0.2)
    assert late.finish() is True and len(fired) == 1
    early = Deadline(0.05, lambda: fired.append(time.monotonic()))
    assert early.finish() is False
    time.sleep(0.1)
    assert len(fired) == 1
