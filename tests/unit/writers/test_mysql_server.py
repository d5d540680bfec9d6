"""What MariadbServer reads from a data directory and how clients reach it (no server run)."""

from __future__ import annotations

import os
import pwd
import socket
import struct
from pathlib import Path

import pytest

from cleancut.demo.shopdb import mysql_connect_args
from cleancut.writers.mysqlfiles import binlog_basename, closed_ancestor, innodb_page_size
from cleancut.writers.mysqlserver import SHORT_SOCKETS, MariadbServer
from cleancut.writers.server import server_class


def fake_ibdata(datadir: Path, page: int) -> None:
    """Pages 0, 1, 2 of a system tablespace: each page's number at offset 4."""
    data = bytearray(4 * 65536)
    for number in range(len(data) // page):
        data[number * page + 4 : number * page + 8] = struct.pack(">I", number)
    (datadir / "ibdata1").write_bytes(bytes(data))


@pytest.mark.parametrize("page", [4096, 8192, 16384, 32768, 65536])
def test_the_page_size_is_read_from_ibdata1(tmp_path: Path, page: int) -> None:
    fake_ibdata(tmp_path, page)
    assert innodb_page_size(tmp_path) == page


def test_no_ibdata1_no_page_size(tmp_path: Path) -> None:
    assert innodb_page_size(tmp_path) is None


def test_the_binary_log_is_found_by_its_index(tmp_path: Path) -> None:
    assert binlog_basename(tmp_path) is None
    (tmp_path / "host-relay-bin.index").write_text("./host-relay-bin.000001\n")
    assert binlog_basename(tmp_path) is None  # a replica's relay log is not a binary log
    (tmp_path / "mysql-bin.index").write_text("./mysql-bin.000001\n./mysql-bin.000002\n")
    assert binlog_basename(tmp_path) == "mysql-bin"


def test_the_command_carries_what_the_data_directory_needs(tmp_path: Path) -> None:
    fake_ibdata(tmp_path, 8192)
    (tmp_path / "ib_logfile0").write_bytes(b"\0" * 4096)
    (tmp_path / "mysql-bin.index").write_text("./mysql-bin.000001\n")
    server = MariadbServer(tmp_path, tmp_path / "run", port=33999, options=["--skip-log-error"])
    argv = server.command("mysql")
    assert argv[1] == "--no-defaults"  # must come first
    assert "--innodb-page-size=8192" in argv and "--innodb-log-file-size=4096" in argv
    assert "--log-bin=mysql-bin" in argv and "--port=33999" in argv
    assert "--bind-address=127.0.0.1" in argv and "--user=mysql" in argv
    assert f"--socket={tmp_path / 'run' / 'mysqld.sock'}" in argv
    assert argv[-1] == "--skip-log-error"


def test_the_uri_parses_back_to_the_socket(tmp_path: Path) -> None:
    odd = tmp_path / "a dir?&=#%"
    server = MariadbServer(odd, odd / "run")
    assert server.uri.startswith("mysql://root@localhost/?unix_socket=/")
    assert mysql_connect_args(server.uri) == {"user": "root", "unix_socket": str(server.socket)}
    assert server.kind == "mariadb" and server.log_file == odd / "run" / "mariadb.log"


def test_a_socket_path_too_long_for_unix_sockets_moves_to_a_short_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    server = MariadbServer(deep / "data", deep / "run")
    assert server.socket.parent.parent == SHORT_SOCKETS
    assert len(os.fsencode(server.socket)) < 100
    assert server.socket == MariadbServer(deep / "data", deep / "run").socket  # stable
    assert server.socket != MariadbServer(deep / "data", deep / "run2").socket
    with socket.socket(socket.AF_UNIX) as probe:  # and it fits
        probe.bind(str(tmp_path / "s.sock"))


def test_a_folder_closed_to_the_server_user_is_found(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid())
    other = next(p for p in pwd.getpwall() if p.pw_uid not in (0, me.pw_uid))
    inner = tmp_path / "sandbox" / "restored" / "mysql"
    inner.mkdir(parents=True)
    (tmp_path / "sandbox").chmod(0o700)
    try:
        assert closed_ancestor(inner, me) is None  # the owner passes
        if os.stat(tmp_path).st_mode & 0o001 and all(
            p.stat().st_mode & 0o001 for p in tmp_path.parents
        ):
            assert closed_ancestor(inner, other) == tmp_path / "sandbox"
            (tmp_path / "sandbox").chmod(0o711)
            assert closed_ancestor(inner, other) is None
    finally:
        (tmp_path / "sandbox").chmod(0o755)


def test_prepare_restored_removes_stale_pid_and_socket_files(tmp_path: Path) -> None:
    datadir = tmp_path / "mysql"
    datadir.mkdir()
    (datadir / "db1.pid").write_text("4242\n")
    (datadir / "mysql.sock.lock").write_text("4242\n")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(datadir / "mysql.sock"))
    (datadir / "ibdata1").write_bytes(b"")
    (datadir / "app").mkdir()
    steps = MariadbServer(datadir, tmp_path / "run").prepare_restored(
        {"binlog_file": "mysql-bin.000003", "binlog_position": 1234, "gtid": "0-1-77"}
    )
    assert sorted(p.name for p in datadir.iterdir()) == ["app", "ibdata1"]
    assert "removed stale db1.pid" in steps and "removed stale mysql.sock" in steps
    assert "binary log position at the cut: mysql-bin.000003:1234, GTID 0-1-77" in steps
    assert steps[-1] == "InnoDB recovers by itself when the server starts"
    assert not (tmp_path / "run").exists()  # nothing made outside the restored files


def test_kinds_map_to_the_server_class() -> None:
    assert server_class("mariadb") is MariadbServer
    assert server_class("mysql") is MariadbServer
