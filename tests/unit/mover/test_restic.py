"""The restic mover against a real restic repository in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cleancut.errors import MoverError
from cleancut.manifest import MANIFEST_FILENAME, MANIFEST_TAG
from cleancut.mover import RepositoryAccess, ResticMover, parse_tags, redact_url, render_tags

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ResticMover:
    """One initialised repository shared by the tests of this module (init costs seconds)."""
    base = tmp_path_factory.mktemp("restic")
    mover = ResticMover(RepositoryAccess(str(base / "repo"), PASSWORD), cache_dir=base / "cache")
    mover.ensure_repository()
    return mover


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(70_000),
        "sub/deeper/c.txt": b"gamma " * 1000,
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_render_and_parse_tags() -> None:
    rendered = render_tags({"app": "shop", MANIFEST_TAG: "", "rp": "x=y"})
    assert rendered == "app=shop,cleancut-manifest,rp=x=y"
    assert parse_tags(rendered.split(",")) == {"app": "shop", MANIFEST_TAG: "", "rp": "x=y"}
    for bad in ({"app": "a,b"}, {"": "v"}, {"a,b": "v"}, {"a=b": "v"}):
        with pytest.raises(ValueError):
            render_tags(bad)


def test_describe_backup_holds_no_password(tmp_path: Path) -> None:
    url = "rest:https://backup:s3cret@198.18.0.1:8000/shop"
    mover = ResticMover(RepositoryAccess(url, PASSWORD), cache_dir=tmp_path / "c")
    (tmp_path / "vol").mkdir()
    argv = mover.describe_backup(tmp_path / "vol", "vm1", {"app": "shop", "rp": "r1"})
    assert not any(PASSWORD in arg or "s3cret" in arg for arg in argv)
    assert argv[:3] == ["restic", "-r", redact_url(url)]
    assert argv[argv.index("--host") + 1] == "vm1"
    assert argv[argv.index("--tag") + 1] == "app=shop,rp=r1"
    assert argv[-1] == "."
    image = tmp_path / "disk.img"
    image.write_bytes(b"x")
    assert mover.describe_backup(image, "vm1", {})[-1] == "disk.img"
    assert mover.preview_backup(image, "vm1", {}).startswith(f"cd {tmp_path} && restic")


def test_restic_missing_says_how_to_install(tmp_path: Path) -> None:
    mover = ResticMover(
        RepositoryAccess(str(tmp_path / "repo"), PASSWORD), restic="/nonexistent/restic"
    )
    with pytest.raises(MoverError, match="make setup"):
        mover.ensure_repository()


@pytest.mark.restic
def test_ensure_repository_inits_once(tmp_path: Path) -> None:
    mover = ResticMover(RepositoryAccess(str(tmp_path / "repo"), PASSWORD), cache_dir=tmp_path)
    assert mover.ensure_repository() is True
    config = (tmp_path / "repo" / "config").read_bytes()
    assert mover.ensure_repository() is False
    assert (tmp_path / "repo" / "config").read_bytes() == config


@pytest.mark.restic
def test_wrong_password_is_a_clear_error(repo: ResticMover) -> None:
    keys = sorted(os.listdir(Path(repo.access.url) / "keys"))
    wrong = ResticMover(RepositoryAccess(repo.access.url, "guess-42"), cache_dir=repo.cache_dir)
    with pytest.raises(MoverError, match="wrong password") as caught:
        wrong.ensure_repository()
    assert "guess-42" not in caught.value.message
    assert sorted(os.listdir(Path(repo.access.url) / "keys")) == keys  # no init attempted


@pytest.mark.restic
def test_caller_restic_environment_is_not_inherited(
    repo: ResticMover, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD_FILE", str(tmp_path / "nonexistent"))
    monkeypatch.setenv("RESTIC_REPOSITORY", str(tmp_path / "elsewhere"))
    assert repo.ensure_repository() is False


@pytest.mark.restic
def test_backup_tree_find_by_tags_and_restore(repo: ResticMover, tmp_path: Path) -> None:
    source = tmp_path / "volume"
    files = make_tree(source)
    upload = repo.backup(source, host="vm1", tags={"app": "tree", "rp": "rp1", "res": "data"})
    repo.backup(source, host="vm1", tags={"app": "tree", "rp": "rp2", "res": "data"})
    assert upload.files == 3
    assert upload.bytes_processed == sum(len(data) for data in files.values())

    found = repo.find({"app": "tree", "rp": "rp1"})
    assert [snapshot.snapshot_id for snapshot in found] == [upload.snapshot_id]
    assert found[0].tags == {"app": "tree", "rp": "rp1", "res": "data"}
    assert found[0].host == "vm1"
    assert len(repo.find({"app": "tree"})) == 2

    # the repository tree starts at the volume root
    assert repo.read_file(upload.snapshot_id, "sub/deeper/c.txt") == files["sub/deeper/c.txt"]
    target = tmp_path / "restored"
    repo.restore(upload.snapshot_id, target)
    restored = {
        str(path.relative_to(target)): path.read_bytes()
        for path in target.rglob("*")
        if path.is_file()
    }
    assert restored == files


@pytest.mark.restic
def test_backup_single_file_and_restore(repo: ResticMover, tmp_path: Path) -> None:
    image = tmp_path / "store" / "disk.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(300_000))
    upload = repo.backup(image, host="hv", tags={"app": "image", "member": "vm1:/"})
    (snapshot,) = repo.find({"app": "image"})
    assert snapshot.snapshot_id == upload.snapshot_id
    assert snapshot.tags["member"] == "vm1:/"
    assert repo.read_file(upload.snapshot_id, "disk.img") == image.read_bytes()
    target = tmp_path / "out"
    target.mkdir()
    repo.restore(upload.snapshot_id, target)
    assert sorted(os.listdir(target)) == ["disk.img"]
    assert (target / "disk.img").read_bytes() == image.read_bytes()


@pytest.mark.restic
def test_restore_refuses_a_non_empty_target(repo: ResticMover, tmp_path: Path) -> None:
    upload = repo.backup_bytes(b"x", "x.txt", host="h", tags={"app": "refuse"})
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep").write_text("live data")
    with pytest.raises(MoverError, match=str(target)):
        repo.restore(upload.snapshot_id, target)
    assert (target / "keep").read_text() == "live data"


@pytest.mark.restic
def test_progress_reports_a_final_summary(repo: ResticMover, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 * 1024 * 1024))
    calls: list[dict[str, Any]] = []
    upload = repo.backup(big, host="h", tags={"app": "progress"}, progress=calls.append)
    assert any(not call["done"] for call in calls)
    final = calls[-1]
    assert final["done"] is True
    assert final["percent"] == 100.0
    assert final["bytes_done"] == final["total_bytes"] == 4 * 1024 * 1024
    assert final["snapshot_id"] == upload.snapshot_id
    assert upload.bytes_added >= 4 * 1024 * 1024  # random data does not compress
    assert all(0.0 <= call["percent"] <= 100.0 for call in calls)


@pytest.mark.restic
def test_backup_bytes_round_trip(repo: ResticMover) -> None:
    data = b'{"rp_id": "r1"}\n' * 100
    tags = {MANIFEST_TAG: "", "app": "bytes", "rp": "r1"}
    upload = repo.backup_bytes(data, MANIFEST_FILENAME, host="cleancut", tags=tags)
    (snapshot,) = repo.find({MANIFEST_TAG: "", "app": "bytes"})
    assert snapshot.snapshot_id == upload.snapshot_id
    assert snapshot.tags == tags
    assert snapshot.host == "cleancut"
    assert repo.read_file(upload.snapshot_id, MANIFEST_FILENAME) == data
    assert repo.find({"app": "no-such-app"}) == []


@pytest.mark.restic
def test_restic_failure_carries_restics_message(repo: ResticMover, tmp_path: Path) -> None:
    with pytest.raises(MoverError) as caught:
        repo.backup(tmp_path / "missing.img", host="h", tags={"app": "fail"})
    message = caught.value.message
    assert "do not exist" in message  # restic's own words
    assert "backup --json" in message and "missing.img" in message
    assert PASSWORD not in message
    with pytest.raises(MoverError, match="no matching ID found"):
        repo.read_file("deadbeef", "x")


@pytest.mark.restic
def test_locked_repository_is_named(repo: ResticMover) -> None:
    # `restic key passwd` holds an exclusive lock while it waits for the new password
    env = {"PATH": os.environ["PATH"], "HOME": str(repo.cache_dir), "RESTIC_PASSWORD": PASSWORD}
    holder = subprocess.Popen(
        ["restic", "-r", repo.access.url, "--no-cache", "key", "passwd"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        locks = Path(repo.access.url) / "locks"
        deadline = time.monotonic() + 20
        while not any(locks.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(MoverError, match="locked by another restic process") as caught:
            repo.backup_bytes(b"x", "x", host="h", tags={"app": "lock"})
        assert "unlock" in caught.value.message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # EOF: an empty new password, so it gives up and unlocks
        holder.wait(timeout=30)
    assert repo.find({"app": "lock"}) == []
