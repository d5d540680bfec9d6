"""The database kinds of the guest config, and where hello finds their files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleancut.config import load_guest
from cleancut.config.guest import GuestConfig, MariadbDatabase, PostgresqlDatabase
from cleancut.errors import ConfigError
from cleancut.guest.writer_set import _inside_volumes

VOLUMES = """\
[volumes.pg]
path = "/srv/pg"
[volumes.wal]
path = "/srv/wal"
"""


def load(tmp_path: Path, text: str) -> GuestConfig:
    path = tmp_path / "guest.toml"
    path.write_text(VOLUMES + text, encoding="utf-8")
    return load_guest(path)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value.message


def test_postgresql_takes_a_dsn_and_a_lock_timeout(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[databases.main]\nkind = "postgresql"\ndsn = "host=/run/postgresql dbname=shop"\n'
        'volume = "pg"\nlock_timeout = "3s"\n',
    )
    db = config.databases["main"]
    assert isinstance(db, PostgresqlDatabase)
    assert db.dsn == "host=/run/postgresql dbname=shop" and db.lock_timeout == 3.0


def test_postgresql_without_a_dsn_is_refused_by_name(tmp_path: Path) -> None:
    message = refused(tmp_path, '[databases.main]\nkind = "postgresql"\nvolume = "pg"\n')
    assert "databases.main" in message and "dsn" in message


def test_a_postgresql_database_has_no_path(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        '[databases.main]\nkind = "postgresql"\ndsn = "x"\nvolume = "pg"\npath = "/srv/pg/x"\n',
    )
    assert "path" in message


@pytest.mark.parametrize("kind", ["mariadb", "mysql"])
def test_mariadb_by_socket_or_by_host(tmp_path: Path, kind: str) -> None:
    by_socket = load(
        tmp_path,
        f'[databases.inv]\nkind = "{kind}"\nsocket = "/run/mysqld/mysqld.sock"\nvolume = "pg"\n',
    )
    db = by_socket.databases["inv"]
    assert isinstance(db, MariadbDatabase) and db.user == "root" and db.lock_timeout == 5.0
    by_host = load(
        tmp_path,
        f'[databases.inv]\nkind = "{kind}"\nhost = "127.0.0.1"\nport = 3307\nvolume = "pg"\n'
        'user = "backup"\npassword_file = "/etc/cleancut/db.pass"\n',
    )
    db = by_host.databases["inv"]
    assert isinstance(db, MariadbDatabase)
    assert db.host == "127.0.0.1" and db.port == 3307 and db.user == "backup"


@pytest.mark.parametrize("where", ['socket = "/run/mysqld/mysqld.sock"\nhost = "127.0.0.1"\n', ""])
def test_mariadb_needs_exactly_one_way_in(tmp_path: Path, where: str) -> None:
    message = refused(tmp_path, f'[databases.inv]\nkind = "mariadb"\n{where}volume = "pg"\n')
    assert "exactly one of socket" in message and "databases.inv" in message


def test_mariadb_paths_must_be_absolute(tmp_path: Path) -> None:
    message = refused(
        tmp_path, '[databases.inv]\nkind = "mariadb"\nsocket = "mysqld.sock"\nvolume = "pg"\n'
    )
    assert "not an absolute path" in message


def test_unknown_database_kind_lists_the_kinds(tmp_path: Path) -> None:
    message = refused(tmp_path, '[databases.x]\nkind = "oracle"\nvolume = "pg"\n')
    for kind in ("sqlite", "postgresql", "mariadb", "mysql"):
        assert kind in message


# -- where the files are (hello) --------------------------------------------------------


def test_locations_are_recorded_relative_to_their_volumes(tmp_path: Path) -> None:
    (tmp_path / "pg" / "15" / "main").mkdir(parents=True)
    (tmp_path / "wal" / "pg_wal").mkdir(parents=True)
    placed = _inside_volumes(
        "main",
        "pg",
        {"data directory": tmp_path / "pg" / "15" / "main", "WAL": tmp_path / "wal" / "pg_wal"},
        {"pg": tmp_path / "pg", "wal": tmp_path / "wal"},
    )
    assert placed == {
        "data directory": {"volume": "pg", "path": "15/main"},
        "WAL": {"volume": "wal", "path": "pg_wal"},
    }


def test_the_deepest_volume_holds_a_location(tmp_path: Path) -> None:
    (tmp_path / "srv" / "pg" / "data").mkdir(parents=True)
    placed = _inside_volumes(
        "main",
        "pg",
        {"data directory": tmp_path / "srv" / "pg" / "data"},
        {"root": tmp_path / "srv", "pg": tmp_path / "srv" / "pg"},
    )
    assert placed["data directory"] == {"volume": "pg", "path": "data"}


def test_a_symlinked_wal_outside_every_volume_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pg" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "pg" / "data" / "pg_wal").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as caught:
        _inside_volumes(
            "main",
            "pg",
            {
                "data directory": tmp_path / "pg" / "data",
                "WAL": tmp_path / "pg" / "data" / "pg_wal",
            },
            {"pg": tmp_path / "pg"},
        )
    message = caught.value.message
    assert f"databases.main: its WAL {tmp_path / 'elsewhere'} lies in no volume" in message
    assert "Declare a [volumes.NAME]" in message


def test_a_data_directory_in_another_volume_names_the_right_one(tmp_path: Path) -> None:
    (tmp_path / "wal" / "data").mkdir(parents=True)
    (tmp_path / "pg").mkdir()
    with pytest.raises(ConfigError) as caught:
        _inside_volumes(
            "main",
            "pg",
            {"data directory": tmp_path / "wal" / "data"},
            {"pg": tmp_path / "pg", "wal": tmp_path / "wal"},
        )
    assert "databases.main.volume" in caught.value.message
    assert "set volume = 'wal'" in caught.value.message
