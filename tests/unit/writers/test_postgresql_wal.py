"""The WAL tail: read from a live WAL folder, written back into a restored one, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cleancut.errors import WriterError
from cleancut.writers.pgwal import read_tail, write_tail

SEGMENT = 1024 * 1024  # small segments keep the test fast
PAGE = 8192


def _segment(folder: Path, name: str, fill: bytes) -> Path:
    path = folder / name
    path.write_bytes(fill * (SEGMENT // len(fill)))
    return path


def test_the_recorded_tail_completes_an_older_copy_of_the_segment(tmp_path: Path) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    restored.mkdir()
    name = "000000010000000000000003"
    live_bytes = os.urandom(SEGMENT)
    (live / name).write_bytes(live_bytes)
    # the snapshot's copy: the same WAL up to 0x5000, older garbage after it
    (restored / name).write_bytes(live_bytes[:0x5000] + b"\0" * (SEGMENT - 0x5000))

    tail = read_tail(live, 1, "0/304100", "0/308010", segment_size=SEGMENT, block_size=PAGE)
    (piece,) = tail["pieces"]
    assert (piece["file"], piece["offset"], piece["length"]) == (name, 0x4000, 0x8000)
    lines = write_tail(restored, tail, os.getuid(), os.getgid())

    assert lines == [f"completed {restored / name} with {0x8000} bytes of WAL at offset 16384"]
    data = (restored / name).read_bytes()
    assert data[:0xC000] == live_bytes[:0xC000]
    assert data[0xC000:] == b"\0" * (SEGMENT - 0xC000)  # nothing past the tail


def test_a_segment_the_snapshot_lacks_is_created_full_size(tmp_path: Path) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    restored.mkdir()
    first, second = "000000010000000000000003", "000000010000000000000004"
    _segment(live, first, b"a")
    _segment(live, second, b"b")
    _segment(restored, first, b"a")
    tail = read_tail(live, 1, "0/3FF000", "0/400100", segment_size=SEGMENT, block_size=PAGE)
    assert [p["file"] for p in tail["pieces"]] == [first, second]

    lines = write_tail(restored, tail, os.getuid(), os.getgid())

    assert lines[1].startswith(f"created {restored / second} with {2 * PAGE} bytes")
    created = (restored / second).read_bytes()
    assert len(created) == SEGMENT
    assert created[: 2 * PAGE] == b"b" * (2 * PAGE) and created[2 * PAGE :].count(0) == (
        SEGMENT - 2 * PAGE
    )
    assert (restored / second).stat().st_mode & 0o777 == 0o600


def test_a_damaged_tail_writes_nothing(tmp_path: Path) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    restored.mkdir()
    _segment(live, "000000010000000000000000", b"x")
    tail = read_tail(live, 1, "0/1000", "0/2000", segment_size=SEGMENT, block_size=PAGE)
    tail["pieces"][0]["sha256"] = "0" * 64
    with pytest.raises(WriterError, match="checksum does not match"):
        write_tail(restored, tail, os.getuid(), os.getgid())
    assert not list(restored.iterdir())


def test_a_missing_live_segment_is_a_writer_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match="000000010000000000000000"):
        read_tail(tmp_path, 1, "0/1000", "0/2000", segment_size=SEGMENT, block_size=PAGE)


def test_a_huge_tail_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match="shorten the hold"):
        read_tail(tmp_path, 1, "0/0", "1/0", segment_size=SEGMENT, block_size=PAGE)
