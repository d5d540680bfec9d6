"""Whether restic may trust size and mtime alone when it uploads a copy or a clone.

restic skips a file whose previous snapshot (the *parent*) holds a file at the same path
with the same size, mtime, inode and ctime. A copy or a clone is a new file each time, so
its inode and ctime always differ: compared that way every file is read again (still
deduplicated, but read and hashed in full). With ``--ignore-inode --ignore-ctime`` restic
compares size and mtime only — and then a file rewritten with the same size and its mtime
put back (``touch -r``, ``cp -p``, ``rsync -a``, a restore) is taken from the parent
unread: the change is lost from the backup.

The source files themselves still carry the truth: any change to a file, content or
metadata, gives it a new ctime, and a file replaced by another has a new inode. So a
provider records each source file's stamp (inode, size, mtime, ctime) as its snapshot saw
it, and after an upload keeps those stamps with the restic snapshot id they went into
(:class:`ChangeTracker`). At the next upload the ignore flags are used only when the record
belongs to that very parent and no source file has the same size and mtime as recorded but
another inode or ctime; otherwise restic compares everything (a full read, still
deduplicated).

Timestamps are coarse on some kernels (one clock tick): a file changed within a tick of
the moment it was recorded may keep its recorded ctime. Like git's "racily clean" index
entries, a file whose recorded ctime lies within :data:`RACY_NS` of the snapshot is never
trusted on size and mtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleancut.errors import ProviderError
from cleancut.providers.base import UploadOptions
from cleancut.providers.tree import FileStamp

#: a recorded ctime this close to (or after) the snapshot's start may be shared by a later
#: change on a kernel with coarse timestamps (a tick is 1-10 ms; generous on purpose)
RACY_NS = 100_000_000
_VERSION = 1


@dataclass(frozen=True)
class Capture:
    """The stamps of a volume's regular files, by relative path, as one snapshot saw them.

    ``taken_ns`` is the wall clock before the first file was looked at. ``exact_times``
    is False when the snapshot could not keep nanosecond mtimes (restic then compares
    truncated times, and a recorded mtime says less than it seems).
    """

    source: str
    taken_ns: int
    stamps: dict[str, FileStamp]
    exact_times: bool = True


@dataclass(frozen=True)
class Record:
    """A capture and the restic snapshot it was uploaded into."""

    snapshot_id: str
    capture: Capture


def changed_unseen(previous: Capture, current: Capture) -> list[str]:
    """The files restic would take from the parent unread although they may have changed.

    restic reads a file whose path is new or whose size or mtime differ; it skips the
    rest. Of those, a file whose inode or ctime differs from the record — or whose record
    is too close to its snapshot to prove anything (racy) — may hold other content.
    """
    racy_from = previous.taken_ns - RACY_NS
    unseen = []
    for rel, now in current.stamps.items():
        before = previous.stamps.get(rel)
        if before is None or now[1:3] != before[1:3]:
            continue  # new path, or new size or mtime: restic reads it anyway
        if now[0] != before[0] or now[3] != before[3] or before[3] >= racy_from:
            unseen.append(rel)
    return sorted(unseen)


_FULL = "every file is read and compared by inode and ctime too"


def decide(parent: str | None, current: Capture | None, record: Record | None) -> UploadOptions:
    """How to upload ``current`` against ``parent``, given the record of the last upload."""
    if parent is None:
        return UploadOptions(None, reason="no previous snapshot: every file is read")
    if current is None:
        return UploadOptions(parent, reason="this snapshot's files were not recorded: " + _FULL)
    if record is None:
        return UploadOptions(parent, reason="no record of the last upload: " + _FULL)
    if not (current.exact_times and record.capture.exact_times):
        return UploadOptions(parent, reason="a snapshot cannot keep nanosecond mtimes: " + _FULL)
    if record.snapshot_id != parent:
        return UploadOptions(
            parent,
            reason=f"the last recorded upload is {record.snapshot_id}, not {parent}: " + _FULL,
        )
    if record.capture.source != current.source:
        return UploadOptions(
            parent,
            reason=f"the record is of {record.capture.source}, not {current.source}: " + _FULL,
        )
    unseen = changed_unseen(record.capture, current)
    if unseen:
        return UploadOptions(
            parent,
            reason=f"{len(unseen)} file(s) changed since {parent} with the same size and mtime "
            f"(first: {unseen[0]}): " + _FULL,
        )
    return UploadOptions(
        parent,
        ignore_inode=True,
        ignore_ctime=True,
        reason=f"no file changed since {parent} without a new size or mtime: unchanged files "
        "are taken from it unread",
    )


class ChangeTracker:
    """One provider's record: the capture of the snapshot just taken, and the state file
    (``path``) of the last successful upload of the same ``source``."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self.current: Capture | None = None

    def captured(self, taken_ns: int, stamps: dict[str, FileStamp], exact: bool = True) -> None:
        """Keep the stamps the snapshot saw (in memory: this runs inside the freeze)."""
        self.current = Capture(self.source, taken_ns, stamps, exact)

    def options(self, parent: str | None) -> UploadOptions:
        """The upload options for the snapshot just taken, against ``parent``."""
        return decide(parent, self.current, self.load())

    def load(self) -> Record | None:
        """The record of the last upload; None when absent or unreadable (never trusted)."""
        try:
            data = json.loads(self.path.read_text(encoding="ascii"))
            if data.get("version") != _VERSION:
                return None
            files = {str(k): _stamp(v) for k, v in data["files"].items()}
            exact = data["exact_times"] is True
            capture = Capture(str(data["source"]), int(data["taken_ns"]), files, exact)
            return Record(str(data["snapshot_id"]), capture)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def uploaded(self, snapshot_id: str) -> None:
        """Record that the snapshot just taken is now restic snapshot ``snapshot_id``.

        Written atomically (a crash leaves the old record or the new one). Raises
        ProviderError if it cannot be written; the old record is then removed, so the next
        upload reads every file rather than trust a record of another snapshot.
        """
        if self.current is None:
            return
        document = {
            "version": _VERSION,
            "source": self.current.source,
            "snapshot_id": snapshot_id,
            "taken_ns": self.current.taken_ns,
            "exact_times": self.current.exact_times,
            "files": self.current.stamps,
        }
        try:
            _write_atomically(self.path, json.dumps(document, separators=(",", ":")))
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise ProviderError(
                f"cannot record the upload of {self.source} in {self.path}: {exc.strerror}; "
                "the next backup of it reads every file"
            ) from exc


def keeps_nanoseconds(directory: Path) -> bool:
    """Whether files in ``directory`` keep an mtime to the nanosecond (a probe file)."""
    fd, name = tempfile.mkstemp(prefix=".cleancut-mtime-probe-", dir=directory)
    try:
        wanted = 1_234_567_891_234_567_891
        os.utime(fd, ns=(wanted, wanted))
        return os.fstat(fd).st_mtime_ns == wanted
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _stamp(value: Any) -> FileStamp:
    ino, size, mtime, ctime = (int(part) for part in value)
    return (ino, size, mtime, ctime)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
