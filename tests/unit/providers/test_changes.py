"""When restic may trust size and mtime alone (cleancut.providers.changes), and the record
of the last upload that decides it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cleancut.errors import ProviderError
from cleancut.providers.changes import (
    RACY_NS,
    Capture,
    ChangeTracker,
    Record,
    changed_unseen,
    decide,
    keeps_nanoseconds,
)
from cleancut.providers.tree import FileStamp

T0 = 1_700_000_000_000_000_000  # when the first snapshot was taken (ns)
OLD = T0 - 3600 * 10**9  # a ctime/mtime an hour before it


def _capture(stamps: dict[str, FileStamp], taken_ns: int = T0, source: str = "/vol") -> Capture:
    return Capture(source, taken_ns, stamps)


BEFORE = _capture({"a": (10, 5, OLD, OLD), "b": (11, 7, OLD, OLD)})


def _now(**changed: FileStamp) -> Capture:
    stamps = dict(BEFORE.stamps)
    stamps.update(changed)
    return _capture(stamps, T0 + 60 * 10**9)


def test_nothing_changed_trusts_size_and_mtime() -> None:
    options = decide("s1", _now(), Record("s1", BEFORE))
    assert (options.parent, options.ignore_inode, options.ignore_ctime) == ("s1", True, True)
    assert "taken from it unread" in options.reason


@pytest.mark.parametrize(
    ("why", "stamp"),
    [
        ("rewritten, mtime put back (touch -r)", (10, 5, OLD, T0 + 1)),
        ("replaced by another file with the same size and mtime", (99, 5, OLD, OLD)),
        ("chmod: metadata only, but ctime cannot tell", (10, 5, OLD, T0 + 1)),
    ],
)
def test_a_change_size_and_mtime_hide_means_a_full_read(why: str, stamp: FileStamp) -> None:
    options = decide("s1", _now(a=stamp), Record("s1", BEFORE))
    assert (options.parent, options.ignore_inode, options.ignore_ctime) == ("s1", False, False)
    assert "1 file(s) changed since s1 with the same size and mtime (first: a)" in options.reason


def test_changes_restic_sees_keep_the_fast_path() -> None:
    grown = (10, 6, T0 + 5, T0 + 5)  # new size and mtime: restic reads it anyway
    touched = (11, 7, T0 + 9, T0 + 9)  # same size, new mtime
    new_file = (12, 1, OLD, T0 + 2)  # a new path: nothing to take from the parent
    options = decide("s1", _now(a=grown, b=touched, c=new_file), Record("s1", BEFORE))
    assert options.ignore_inode and options.ignore_ctime


def test_a_racy_record_is_never_trusted() -> None:
    # written within a clock tick of the first snapshot: a later change may share its ctime
    racy = _capture({"a": (10, 5, T0 - RACY_NS // 2, T0 - RACY_NS // 2)})
    assert changed_unseen(racy, _capture(dict(racy.stamps), T0 + 10**9)) == ["a"]
    settled = _capture({"a": (10, 5, T0 - 2 * RACY_NS, T0 - 2 * RACY_NS)})
    assert changed_unseen(settled, _capture(dict(settled.stamps), T0 + 10**9)) == []


@pytest.mark.parametrize(
    ("parent", "current", "record", "reason"),
    [
        (None, _now(), Record("s1", BEFORE), "no previous snapshot"),
        ("s1", None, Record("s1", BEFORE), "were not recorded"),
        ("s1", _now(), None, "no record of the last upload"),
        ("s2", _now(), Record("s1", BEFORE), "the last recorded upload is s1, not s2"),
        ("s1", _capture({}, source="/other"), Record("s1", BEFORE), "the record is of /vol"),
        ("s1", Capture("/vol", T0, {}, exact_times=False), Record("s1", BEFORE), "nanosecond"),
        ("s1", _now(), Record("s1", Capture("/vol", T0, {}, exact_times=False)), "nanosecond"),
    ],
)
def test_without_a_matching_record_restic_compares_everything(
    parent: str | None, current: Capture | None, record: Record | None, reason: str
) -> None:
    options = decide(parent, current, record)
    assert options.parent == parent
    assert not options.ignore_inode and not options.ignore_ctime
    assert reason in options.reason


def test_tracker_records_an_upload_and_reads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "staging" / ".cleancut-state" / "files.json"
    tracker = ChangeTracker(path, "/vol")
    tracker.captured(T0, {"a": (10, 5, OLD, OLD), "odd\udcffname": (11, 1, OLD, OLD)})
    assert tracker.options("s1").ignore_ctime is False  # nothing recorded yet
    tracker.uploaded("s1")

    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert tracker.current is not None
    later = ChangeTracker(path, "/vol")  # the next backup: a new guest process
    assert later.load() == Record("s1", tracker.current)
    later.captured(T0 + 10**10, dict(tracker.current.stamps))
    assert later.options("s1").ignore_ctime is True
    assert later.options("s0").ignore_ctime is False
    assert [p.name for p in path.parent.iterdir()] == ["files.json"]  # no temporary left


def test_an_unreadable_record_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "files.json"
    tracker = ChangeTracker(path, "/vol")
    for text in ("{not json", json.dumps({"version": 99}), json.dumps({"version": 1}), "[]"):
        path.write_text(text)
        assert tracker.load() is None, text


def test_a_record_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state folder should be")
    tracker = ChangeTracker(tmp_path / "state" / "files.json", "/vol")
    tracker.captured(T0, {"a": (10, 5, OLD, OLD)})
    with pytest.raises(ProviderError, match="the next backup of it reads every file") as err:
        tracker.uploaded("s2")
    assert str(tmp_path / "state" / "files.json") in err.value.message


def test_mtime_probe(tmp_path: Path) -> None:
    assert keeps_nanoseconds(tmp_path) is True  # ext4, XFS, btrfs and tmpfs all do
    assert list(tmp_path.iterdir()) == []
