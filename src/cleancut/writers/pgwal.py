"""The WAL a frozen snapshot lacks: recorded at the cut, put back into the restored copy.

A non-exclusive backup (``pg_backup_start`` … ``pg_backup_stop``) is consistent only at
its stop LSN: recovery from its ``backup_label`` must replay up to the end-of-backup
record that ``pg_backup_stop`` writes. cleancut takes the snapshot while the backup is in
progress and stops it after the thaw, so that record — and every WAL byte flushed after
the hold was taken — is missing from the snapshot, and PostgreSQL refuses the restored
copy ("WAL ends before end of online backup"; seen on PostgreSQL 15).

So the writer reads, right after ``pg_backup_stop``, the live WAL from the flush LSN it
saw when the hold was in place (everything before it was on disk before the freeze, so it
is in the snapshot) to just past the stop LSN — usually a few hundred KiB — and records it
compressed with the backup's details. The restore writes those bytes back at the same
offsets of the same segment files: WAL is append-only, so the bytes the snapshot already
has are overwritten with the same bytes, and recovery then reaches the end of the backup
by itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

from cleancut.errors import WriterError

#: The most WAL one cut records; more means the hold lasted far too long under heavy load.
MAX_TAIL_BYTES = 64 * 1024 * 1024


def parse_lsn(text: str) -> int:
    """``"0/30769C8"`` as a number."""
    high, _, low = str(text).partition("/")
    if not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    """A number as PostgreSQL writes an LSN (``"0/30769C8"``)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """The WAL file name of segment ``segno`` on ``timeline`` (as ``pg_walfile_name``)."""
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def tail_ranges(
    from_lsn: int, to_lsn: int, segment_size: int, block_size: int
) -> list[tuple[int, int, int]]:
    """``(segno, start offset, end offset)`` per segment covering ``from_lsn``…``to_lsn``:
    whole WAL pages, and one page more past the end (the segment switch that follows the
    end-of-backup record may start there)."""
    start = from_lsn // block_size * block_size
    end = -(-to_lsn // block_size) * block_size + block_size
    end = min(end, -(-to_lsn // segment_size) * segment_size)  # not into the next segment
    ranges = []
    position = start
    while position < end:
        segno = position // segment_size
        segment_end = min(end, (segno + 1) * segment_size)
        ranges.append((segno, position % segment_size, segment_end - segno * segment_size))
        position = segment_end
    return ranges


def read_tail(
    wal_dir: Path,
    timeline: int,
    from_lsn: str,
    to_lsn: str,
    *,
    segment_size: int,
    block_size: int,
) -> dict[str, Any]:
    """The live WAL between the two LSNs, as JSON-serialisable pieces (zlib, base64)."""
    low, high = parse_lsn(from_lsn), parse_lsn(to_lsn)
    if high < low:
        raise WriterError(f"WAL tail: stop LSN {to_lsn} lies before {from_lsn}")
    if high - low > MAX_TAIL_BYTES:
        raise WriterError(
            f"WAL tail: {high - low} bytes of WAL were written during the hold (more than "
            f"{MAX_TAIL_BYTES}); shorten the hold (freeze_timeout) or the load during it"
        )
    pieces = []
    for segno, start, end in tail_ranges(low, high, segment_size, block_size):
        name = segment_name(timeline, segno, segment_size)
        data = _read(wal_dir / name, start, end - start)
        pieces.append(
            {
                "file": name,
                "offset": start,
                "length": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "zlib_base64": base64.b64encode(zlib.compress(data, 6)).decode("ascii"),
            }
        )
    return {
        "from_lsn": from_lsn,
        "to_lsn": to_lsn,
        "timeline": timeline,
        "segment_size": segment_size,
        "block_size": block_size,
        "pieces": pieces,
    }


def _read(path: Path, offset: int, length: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise WriterError(
            f"WAL tail: cannot read {path}: {exc.strerror}; the guest must be able to read "
            "the server's WAL directory (run it as root or as the server's user)"
        ) from exc
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise WriterError(f"WAL tail: {path} ends before offset {offset + length}")
    return data


def write_tail(wal_dir: Path, tail: dict[str, Any], uid: int, gid: int) -> list[str]:
    """Put the recorded WAL back into ``wal_dir`` (a restored ``pg_wal``); one line per file.

    A segment the snapshot does not have is created (zero-filled, full size); each piece's
    checksum is verified before anything is written.
    """
    size = int(tail["segment_size"])
    decoded = []
    for piece in tail["pieces"]:
        data = zlib.decompress(base64.b64decode(piece["zlib_base64"]))
        if hashlib.sha256(data).hexdigest() != piece["sha256"]:
            raise WriterError(f"WAL tail for {piece['file']}: its checksum does not match")
        decoded.append((str(piece["file"]), int(piece["offset"]), data))
    lines = []
    for name, offset, data in decoded:
        path = wal_dir / name
        created = not path.exists()
        _write_piece(path, offset, data, size, uid, gid)
        what = "created" if created else "completed"
        lines.append(f"{what} {path} with {len(data)} bytes of WAL at offset {offset}")
    return lines


def _write_piece(path: Path, offset: int, data: bytes, size: int, uid: int, gid: int) -> None:
    if path.exists() and path.stat().st_size != size:
        raise WriterError(f"{path} is {path.stat().st_size} bytes, not a WAL segment of {size}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size == 0:
            os.ftruncate(fd, size)
        os.pwrite(fd, data, offset)
        os.fsync(fd)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
