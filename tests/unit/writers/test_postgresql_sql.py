"""The PostgreSQL writer's statements per server version, and its LSN and WAL arithmetic."""

from __future__ import annotations

import pytest

from cleancut.errors import WriterError
from cleancut.writers.pgwal import format_lsn, parse_lsn, segment_name, tail_ranges
from cleancut.writers.postgresql import backup_sql, start_statement

MIB16 = 16 * 1024 * 1024


def test_postgresql_15_and_newer_use_pg_backup_start_and_the_idle_session_deadline() -> None:
    for version in (150000, 150018, 170002):
        sql = backup_sql(version)
        assert sql.start == "pg_backup_start(%(label)s::text, fast => true)"
        assert sql.stop == "pg_backup_stop(wait_for_archive => false)"
        assert sql.timeout_setting == "idle_session_timeout"
        assert not sql.in_transaction


def test_postgresql_14_uses_the_old_names_non_exclusive() -> None:
    sql = backup_sql(140011)
    assert sql.start == "pg_start_backup(%(label)s::text, true, false)"  # fast, not exclusive
    assert sql.stop == "pg_stop_backup(false, false)"  # not exclusive, no archive wait
    assert sql.timeout_setting == "idle_session_timeout"


def test_servers_before_14_end_the_session_idle_in_a_transaction() -> None:
    for version in (100023, 130015):
        sql = backup_sql(version)
        assert sql.start.startswith("pg_start_backup(")
        assert sql.timeout_setting == "idle_in_transaction_session_timeout"
        assert sql.in_transaction


def test_servers_before_10_are_refused_with_the_fix() -> None:
    with pytest.raises(WriterError, match=r"PostgreSQL 9\.6 is too old.*upgrade"):
        backup_sql(90624)


def test_the_start_statement_starts_first_then_sets_the_deadline_it_has_left() -> None:
    text = start_statement(backup_sql(150004))
    assert "FROM (SELECT pg_backup_start(%(label)s::text, fast => true) AS lsn OFFSET 0)" in text
    assert "set_config('idle_session_timeout', greatest(1, %(ms)s::bigint - " in text
    assert "clock_timestamp() - statement_timestamp()" in text  # time the start itself took
    assert "pg_current_wal_flush_lsn()" in text
    assert "pg_start_backup(%(label)s::text, true, false)" in start_statement(backup_sql(140000))


def test_lsns_round_trip() -> None:
    assert parse_lsn("0/30769C8") == 0x30769C8
    assert parse_lsn("1A/0") == 0x1A << 32
    assert format_lsn(0x30769C8) == "0/30769C8"
    assert format_lsn(parse_lsn("FF/FFFFFFFF")) == "FF/FFFFFFFF"
    with pytest.raises(ValueError):
        parse_lsn("30769C8")


def test_segment_names_match_pg_walfile_name() -> None:
    # pg_walfile_name('0/30769C8') on timeline 1 with 16 MiB segments
    assert segment_name(1, 0x30769C8 // MIB16, MIB16) == "000000010000000000000003"
    # 1/0 is the first segment of log id 1; 1 GiB segments: 4 per log id
    assert segment_name(2, (1 << 32) // MIB16, MIB16) == "000000020000000100000000"
    assert segment_name(1, 5, 1 << 30) == "000000010000000100000001"


def test_the_tail_is_whole_pages_and_one_more_within_the_segment() -> None:
    ranges = tail_ranges(0x3070010, 0x30769C8, MIB16, 8192)
    assert ranges == [(3, 0x70000, 0x7A000)]  # from 0x3070000: 0x30769C8's page, and one more
    # the extra page never reaches into the next segment
    assert tail_ranges(0x3FFF000, 0x3FFFFF0, MIB16, 8192) == [(3, 0xFFE000, MIB16)]


def test_a_tail_across_a_segment_boundary_is_two_pieces() -> None:
    ranges = tail_ranges(0x3FFE100, 0x4000200, MIB16, 8192)
    assert ranges == [(3, 0xFFE000, MIB16), (4, 0, 0x4000)]
