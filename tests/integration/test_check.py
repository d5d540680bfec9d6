"""``cleancut check`` on real restic: each kind of problem is made by hand and reported.

The application spans two hosts, so each RP is two member snapshots and a manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cleancut.config.load import load_app
from cleancut.coordinator.repository import repository_access
from cleancut.coordinator.runlock import AppLock
from cleancut.manifest import MANIFEST_FILENAME, MANIFEST_TAG
from cleancut.mover.restic import ResticMover
from tests.integration.cutlib import App, make_app

pytestmark = pytest.mark.restic

PASSWORD = "correct horse battery staple"  # what make_app writes
DEAD_RP = "20260101T000000Z-dead"


def _app(root: Path, rps: int) -> tuple[App, list[dict[str, Any]]]:
    """A two-host application (with [retention], for forget) and ``rps`` of its RPs."""
    guests = {}
    for host in ("vm1", "vm2"):
        folder = root / f"{host}-data"
        (folder / "sub").mkdir(parents=True)
        (folder / "file.txt").write_text(f"{host}\n" * 100)
        (folder / "sub" / "more.bin").write_bytes(os.urandom(20_000))
        guests[host] = (
            f'staging = "{root / f"{host}-staging"}"\n\n'
            f'[volumes.data]\npath = "{folder}"\nsnapshot = "copy"\nfreeze = false\n'
        )
    app = make_app(root, guests)
    with app.config.open("a", encoding="utf-8") as config:
        config.write("\n[retention]\nkeep_last = 5\n")
    manifests = []
    for _ in range(rps):
        code, manifest, stderr = app.backup_json()
        assert code == 3 and manifest is not None, stderr  # 3: an unfrozen copy's level
        manifests.append(manifest)
        time.sleep(1.1)  # RP ids are to the second
    return app, manifests


def _mover(app: App) -> ResticMover:
    loaded = load_app(app.config)
    return ResticMover(repository_access(loaded.config.repository, config_file=str(app.config)))


def _check(app: App, *args: str, code: int) -> dict[str, Any]:
    done = app.run("check", "--json", *args)
    assert done.returncode == code, (done.stdout, done.stderr)
    (line,) = done.stdout.splitlines()
    result: dict[str, Any] = json.loads(line)
    assert result["event"] == "result"
    if code == 12:
        assert "found" in done.stderr and "problems" in done.stderr
    return result


def _counts(result: dict[str, Any]) -> tuple[int, ...]:
    keys = ("rps", "members", "orphans", "missing", "size_mismatches", "unreadable_manifests")
    return tuple(result[key] for key in keys)


def _member(manifest: dict[str, Any], host: str) -> str:
    (snapshot,) = [m["repository_snapshot"] for m in manifest["members"] if m["host"] == host]
    return str(snapshot)


def _restic(app: App, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "RESTIC_REPOSITORY": str(app.repository),
        "RESTIC_PASSWORD": PASSWORD,
    }
    done = subprocess.run(
        ["restic", *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_healthy_repository_passes(trusted_dir: Path) -> None:
    app, _ = _app(trusted_dir, 2)

    result = _check(app, code=0)

    assert _counts(result) == (2, 4, 0, 0, 0, 0)
    assert result["ok"] is True and result["problems"] == []
    assert result["restic_check"]["ok"] is True
    assert result["restic_check"]["output_tail"][-1] == "no errors were found"
    assert result["manifests_read"] == 0  # the catalog holds them under the same ids
    app.catalog.unlink()  # another machine: every manifest is read from the repository
    again = _check(app, "--read-data-subset", "100%", code=0)
    assert _counts(again) == (2, 4, 0, 0, 0, 0) and again["manifests_read"] == 2
    assert again["restic_check"]["read_data_subset"] == "100%"
    text = app.run("check")
    assert text.returncode == 0, text.stderr
    assert "2 recovery points, 4 members; restic check ok" in text.stdout
    assert "no problems found" in text.stdout


def test_missing_members_orphans_and_unreadable_manifests_are_reported(
    trusted_dir: Path,
) -> None:
    app, (first, second) = _app(trusted_dir, 2)
    mover = _mover(app)
    gone = _member(first, "vm1")
    _restic(app, "forget", gone)  # a member removed by hand
    tags = {"cleancut": "", "app": "itest", "rp": DEAD_RP, "host": "vm2", "resource": "data"}
    orphan = mover.backup_bytes(b"half", "data.img", host="vm2", tags=tags).snapshot_id
    bad_tags = {MANIFEST_TAG: "", "app": "itest", "rp": "20260101T000000Z-bad0"}
    bad = mover.backup_bytes(b"{not a manifest", MANIFEST_FILENAME, host="cleancut", tags=bad_tags)

    result = _check(app, code=12)

    assert _counts(result) == (2, 4, 1, 1, 0, 1)
    found = result["findings"]
    assert found["missing"] == [
        {"rp": first["rp_id"], "host": "vm1", "resource": "data", "snapshot": gone}
    ]
    assert [(o["snapshot"], o["rp"], o["host"]) for o in found["orphans"]] == [
        (orphan, DEAD_RP, "vm2")
    ]
    assert found["unreadable_manifests"][0]["snapshot"] == bad.snapshot_id
    problems = "\n".join(result["problems"])
    assert f"RP {first['rp_id']}: member vm1/data: snapshot {gone} is not in the" in problems
    assert f"orphan member snapshot {orphan} (rp {DEAD_RP}, vm2/data)" in problems
    assert "`cleancut forget` removes it" in problems
    assert f"manifest snapshot {bad.snapshot_id} is not a valid manifest" in problems
    assert second["rp_id"] not in problems

    # the advice holds: with the broken RP's manifest and the bad one forgotten by hand,
    # `cleancut forget` removes the orphan and the broken RP's other member, and the
    # repository passes
    (manifest,) = mover.find({MANIFEST_TAG: "", "rp": first["rp_id"]})
    _restic(app, "forget", bad.snapshot_id, manifest.snapshot_id)
    forget = app.run("forget", "--json")
    assert forget.returncode == 0, forget.stderr
    after = _check(app, code=0)
    assert _counts(after) == (1, 2, 0, 0, 0, 0)


def test_a_manifest_recording_other_sizes_is_reported(trusted_dir: Path) -> None:
    """A manifest that names real member snapshots, but one with a size it does not hold
    (as if it pointed at another snapshot)."""
    app, (real,) = _app(trusted_dir, 1)
    forged = json.loads(json.dumps(real))
    forged["rp_id"] = "20260101T000000Z-f0e0"
    (member,) = [m for m in forged["members"] if m["host"] == "vm2"]
    member["bytes_processed"] += 1
    tags = {MANIFEST_TAG: "", "app": "itest", "rp": forged["rp_id"]}
    _mover(app).backup_bytes(
        json.dumps(forged).encode(), MANIFEST_FILENAME, host="cleancut", tags=tags
    )

    result = _check(app, code=12)

    assert _counts(result) == (2, 4, 0, 0, 1, 0)
    (mismatch,) = result["findings"]["size_mismatches"]
    assert (mismatch["rp"], mismatch["host"], mismatch["snapshot"]) == (
        forged["rp_id"],
        "vm2",
        _member(real, "vm2"),
    )
    assert mismatch["stored"] == member["bytes_processed"] - 1 == 20_400
    assert "holds 20400 bytes of files, the manifest recorded 20401" in result["problems"][0]


def _data_pack(app: App) -> tuple[Path, int]:
    """A pack holding only file data (no tree), and the offset of a blob in it."""
    for index_id in _restic(app, "list", "index").split():
        for pack in json.loads(_restic(app, "cat", "index", index_id))["packs"]:
            if all(blob["type"] == "data" for blob in pack["blobs"]):
                path = app.repository / "data" / pack["id"][:2] / pack["id"]
                return path, int(pack["blobs"][0]["offset"])
    raise AssertionError("no pack of data only")


def test_damaged_packs_are_caught_by_restic_check(trusted_dir: Path) -> None:
    app, _ = _app(trusted_dir, 1)
    pack, offset = _data_pack(app)
    pack.chmod(0o600)  # restic stores packs read-only
    data = bytearray(pack.read_bytes())
    data[offset + 20] ^= 0xFF  # one bit-rotten byte: only reading the data finds it
    pack.write_bytes(bytes(data))

    assert _check(app, code=0)["restic_check"]["ok"] is True
    result = _check(app, "--read-data-subset", "100%", code=12)
    assert result["restic_check"]["ok"] is False
    assert any("Pack ID does not match" in line for line in result["restic_check"]["output_tail"])
    assert result["problems"][0].startswith("restic check --read-data-subset 100% found the")
    assert _counts(result) == (1, 2, 0, 0, 0, 0)  # the manifests themselves are fine

    pack.write_bytes(bytes(data[: len(data) // 2]))  # a truncated pack: the structure check
    text = app.run("check")
    assert text.returncode == 12, text.stderr
    assert "restic check FAILED" in text.stdout and "restic check said:" in text.stdout


def test_a_bad_subset_is_a_usage_error_and_the_run_lock_is_taken(trusted_dir: Path) -> None:
    app = make_app(trusted_dir, {"vm1": f'staging = "{trusted_dir / "staging"}"\n'})
    done = app.run("check", "--read-data-subset", "0%")
    assert done.returncode == 2, done.stderr
    assert "--read-data-subset: '0%' is not a part of the data" in done.stderr
    assert "1/10" in done.stderr
    with AppLock("itest", action="backup"):
        locked = app.run("check")
    assert locked.returncode == 11, locked.stderr
    assert f"(pid {os.getpid()}, backup, since " in locked.stderr
    assert "run this check again" in locked.stderr
