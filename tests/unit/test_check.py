"""The check's parts: the --read-data-subset rule, reading sizes from restic find, the report."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from cleancut.check import (
    CheckReport,
    MemberRef,
    Orphan,
    SizeMismatch,
    UnreadableManifest,
    parse_read_data_subset,
)
from cleancut.errors import ConfigError
from cleancut.mover.base import RepositoryAccess, RepositoryCheck
from cleancut.mover.restic import ResticMover
from cleancut.mover.restic_json import FindSizes

SNAP_A = "a" * 64
SNAP_B = "b" * 64


@pytest.mark.parametrize(
    "value", ["5%", "0.5%", "100%", ".5%", "1/10", "256/256", "500M", "1g", "7"]
)
def test_subsets_restic_takes_are_accepted(value: str) -> None:
    assert parse_read_data_subset(f" {value} ") == value


@pytest.mark.parametrize(
    "value",
    ["", "0%", "101%", "five%", "1_0%", "nan%", "0/3", "3/2", "1/257", "1/", "0", "5X", "-5M"],
)
def test_other_subsets_are_a_config_error_naming_the_option(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_read_data_subset(value)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith("--read-data-subset: ")
    assert "5%" in caught.value.message and "1/10" in caught.value.message


def _find_output(groups: dict[str, list[dict[str, object]]]) -> bytes:
    """What ``restic find --json`` prints: one line, no spaces."""
    parts = [
        json.dumps({"matches": nodes, "hits": len(nodes), "snapshot": sid}, separators=(",", ":"))
        for sid, nodes in groups.items()
    ]
    return ("[" + ",".join(parts) + "]\n").encode()


TRICKY: dict[str, list[dict[str, object]]] = {
    SNAP_A: [
        {"path": "/d", "type": "dir"},
        {"path": '/x","size":999,"snapshot":"' + "c" * 64, "type": "file", "size": 5},
        {"path": "/a,b", "type": "file", "size": 7},
        {"path": "/l", "type": "symlink", "linktarget": 'size":3'},
    ],
    SNAP_B: [{"path": "/disk.img", "type": "file", "size": 1 << 40}],
}


@pytest.mark.parametrize("chunk", [1, 3, 17, 1 << 20])
def test_find_sizes_sum_each_snapshot_whatever_the_chunks(chunk: int) -> None:
    """Names that look like the keys do not count, a chunk may end anywhere."""
    data = _find_output(TRICKY)
    reader = FindSizes()
    for start in range(0, len(data), chunk):
        reader.feed(data[start : start + chunk])
    reader.read(io.BytesIO(b""))
    assert reader.sizes() == {SNAP_A: 12, SNAP_B: 1 << 40}


def test_find_sizes_refuse_restics_plain_text_among_the_json() -> None:
    data = _find_output(TRICKY)
    cut = data.index(b',{"path":"/a,b"')
    damaged = data[:cut] + b"Unable to load tree 1234\n ... which belongs to snapshot x\n"
    reader = FindSizes()
    reader.read(io.BytesIO(damaged + data[cut:]))
    with pytest.raises(ValueError, match="text among the JSON"):
        reader.sizes()
    empty = FindSizes()
    empty.read(io.BytesIO(b"[]\n"))
    assert empty.sizes() == {}
    nothing = FindSizes()
    nothing.read(io.BytesIO(b""))
    with pytest.raises(ValueError, match="printed nothing"):
        nothing.sizes()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ResticMover:
    base = tmp_path_factory.mktemp("restic-check")
    mover = ResticMover(RepositoryAccess(str(base / "repo"), "pw"), cache_dir=base / "cache")
    mover.ensure_repository()
    return mover


@pytest.mark.restic
def test_snapshot_sizes_are_what_the_backup_processed(repo: ResticMover, tmp_path: Path) -> None:
    """Hard links count each time (restic stats --mode restore-size counts them once),
    symlinks, directories and empty files count nothing, a sparse image its full size."""
    tree = tmp_path / "tree"
    (tree / "sub" / "empty-dir").mkdir(parents=True)
    (tree / "a.bin").write_bytes(os.urandom(5000))
    os.link(tree / "a.bin", tree / "sub" / "a-again.bin")
    (tree / "link").symlink_to("a.bin")
    (tree / "empty").write_bytes(b"")
    image = tmp_path / "images" / "disk.img"
    image.parent.mkdir()
    with image.open("wb") as handle:
        handle.truncate(8 << 20)
        handle.write(b"boot")
    uploads = [repo.backup(path, host="h", tags={"t": "sizes"}) for path in (tree, image)]
    assert uploads[0].bytes_processed == 10_000

    sizes = repo.snapshot_sizes([u.snapshot_id for u in uploads] + ["deadbeef"])

    assert sizes == {u.snapshot_id: u.bytes_processed for u in uploads}
    assert sizes[uploads[1].snapshot_id] == 8 << 20


@pytest.mark.restic
def test_restic_check_of_a_sound_repository(repo: ResticMover) -> None:
    result = repo.check("100%")
    assert result.ok and result.read_data_subset == "100%"
    assert result.output[-1] == "no errors were found"


def _report(**found: object) -> CheckReport:
    report = CheckReport("shop", RepositoryCheck(True, 1.5, ["no errors were found"]))
    report.rps, report.members = 2, 4
    for name, value in found.items():
        setattr(report, name, value)
    return report


def test_a_report_without_findings_is_ok() -> None:
    report = _report()
    assert report.ok and report.problems == []
    summary = report.as_dict()
    assert (summary["rps"], summary["members"], summary["orphans"], summary["missing"]) == (
        2,
        4,
        0,
        0,
    )
    assert summary["restic_check"] == {
        "ok": True,
        "duration": 1.5,
        "read_data_subset": None,
        "output_tail": ["no errors were found"],
    }


def test_each_finding_is_a_problem_naming_where_and_what_to_do() -> None:
    ref = MemberRef("20260101T000000Z-0001", "vm1", "data", "1234abcd")
    report = _report(
        missing=[ref, MemberRef("20260101T000000Z-0002", "vm2", "db", None)],
        size_mismatches=[SizeMismatch(ref, 10, 11)],
        orphans=[
            Orphan("5678abcd", "20250101T000000Z-dead", "vm1", "data", has_manifest=False),
            Orphan("9999abcd", "20260101T000000Z-0001", "vm2", "data", has_manifest=True),
        ],
        unreadable_manifests=[UnreadableManifest("feedbeef", "20260101T000000Z-0003", "bad")],
        repository=RepositoryCheck(False, 2.0, ["Pack ID does not match", "Fatal: x"], "5%"),
    )
    problems = report.problems
    assert not report.ok and len(problems) == 7
    restic, unreadable, missing, missing_none, size, leftover, stray = problems
    assert "restic check --read-data-subset 5%" in restic and "Pack ID does not match" in restic
    assert "20260101T000000Z-0003" in unreadable and "restic forget feedbeef" in unreadable
    assert "RP 20260101T000000Z-0001: member vm1/data: snapshot 1234abcd" in missing
    assert "names no snapshot of vm2/db" in missing_none
    assert "holds 11 bytes" in size and "recorded 10" in size and "cleancut verify" in size
    assert "5678abcd" in leftover and "`cleancut forget` removes it" in leftover
    assert "`restic forget 9999abcd` removes it" in stray
    summary = report.as_dict()
    assert summary["ok"] is False and summary["problems"] == problems
    assert (summary["orphans"], summary["missing"], summary["size_mismatches"]) == (2, 2, 1)
    assert summary["unreadable_manifests"] == 1
    assert summary["findings"]["size_mismatches"][0]["stored"] == 11
