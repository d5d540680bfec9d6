"""The restic mover against a real restic repository in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
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
    # honest about what runs: the repository goes in the environment, not on argv
    assert argv[:3] == [f"RESTIC_REPOSITORY={redact_url(url)}", "restic", "--cache-dir"]
    assert "-r" not in argv and "--repo" not in argv
    assert argv[argv.index("--host") + 1] == "vm1"
    assert argv[argv.index("--tag") + 1] == "app=shop,rp=r1"
    assert argv[-1] == "."
    image = tmp_path / "disk.img"
    image.write_bytes(b"x")
    assert mover.describe_backup(image, "vm1", {})[-1] == "disk.img"
    preview = mover.preview_backup(image, "vm1", {})
    assert preview.startswith(f"cd {tmp_path} && RESTIC_REPOSITORY='{redact_url(url)}' restic ")
    assert "s3cret" not in preview
    for described in (mover.describe_init(), mover.describe_backup_bytes("m", "h", {})):
        assert described[:2] == [f"RESTIC_REPOSITORY={redact_url(url)}", "restic"]
        assert not any("s3cret" in arg for arg in described)


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
    env["RESTIC_REPOSITORY"] = repo.access.url
    holder = subprocess.Popen(
        ["restic", "--no-cache", "key", "passwd"],
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


# -- secrets never on a command line ---------------------------------------------------

#: a restic stand-in that records how it was started (argv as the kernel shows it to every
#: user, and which repository its environment names), then becomes the real restic
RECORDER = """#!{python} -I
import json, os, sys
with open("/proc/self/cmdline", "rb") as handle:
    argv = [part.decode() for part in handle.read().split(b"\\0") if part]
repository = os.environ.get("RESTIC_REPOSITORY")
record = {{"argv": argv, "args": sys.argv[1:], "env": sorted(os.environ), "repository": repository}}
with open({log!r}, "a") as log:
    log.write(json.dumps(record) + "\\n")
os.execv({restic!r}, [{restic!r}, *sys.argv[1:]])
"""


def _secret_url(tmp_path: Path) -> str:
    """A real local repository whose location looks like a URL with credentials in it."""
    folder = tmp_path / "backup:s3cret@vault"
    folder.mkdir()
    return str(folder / "repo")


def _recording_mover(tmp_path: Path, url: str) -> tuple[ResticMover, Path]:
    real = shutil.which("restic")
    assert real is not None
    log = tmp_path / "calls.jsonl"
    wrapper = tmp_path / "restic-recorder"
    wrapper.write_text(RECORDER.format(python=sys.executable, log=str(log), restic=real))
    wrapper.chmod(0o755)
    access = RepositoryAccess(url, PASSWORD)
    return ResticMover(access, restic=str(wrapper), cache_dir=tmp_path / "cache"), log


def _calls(log: Path) -> list[dict[str, Any]]:
    """Each recorded call, with ``command`` the restic command it ran (``backup``, ...)."""
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    for call in calls:
        args = call["args"]
        call["command"] = args[2] if args[:1] == ["--cache-dir"] else args[0]
    return calls


@pytest.mark.restic
def test_no_restic_call_puts_the_repository_on_its_command_line(tmp_path: Path) -> None:
    url = _secret_url(tmp_path)
    mover, log = _recording_mover(tmp_path, url)
    source = tmp_path / "volume"
    make_tree(source)

    mover.ensure_repository()
    first = mover.backup(source, host="vm1", tags={"app": "argv"})
    mover.backup(source, host="vm1", tags={"app": "argv"}, parent=first.snapshot_id)
    mover.backup_bytes(b"{}", MANIFEST_FILENAME, host="cleancut", tags={"app": "argv"})
    (stored, *_) = mover.find({"app": "argv"})
    assert mover.read_file(stored.snapshot_id, "a.txt") == b"alpha\n"
    mover.restore(stored.snapshot_id, tmp_path / "restored")
    assert (tmp_path / "restored" / "a.txt").read_bytes() == b"alpha\n"

    calls = _calls(log)
    commands = {call["command"] for call in calls}
    assert {"cat", "init", "backup", "snapshots", "dump", "restore"} <= commands
    for call in calls:
        shown = " ".join(call["argv"])
        assert "s3cret" not in shown and url not in shown and PASSWORD not in shown, shown
        assert "-r" not in call["argv"] and "--repo" not in call["argv"], shown
        assert call["repository"] == url
        assert "RESTIC_PASSWORD" in call["env"]


@pytest.mark.restic
def test_the_running_restic_shows_no_repository_in_proc_cmdline(tmp_path: Path) -> None:
    url = _secret_url(tmp_path)
    mover = ResticMover(RepositoryAccess(url, PASSWORD), cache_dir=tmp_path / "cache")
    mover.ensure_repository()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(96 * 1024 * 1024))
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            mover.backup(big, host="h", tags={"app": "proc"})
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=upload)
    worker.start()
    seen: dict[int, tuple[bytes, bytes]] = {}
    while worker.is_alive():
        for pid in _restic_children():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue  # it ended meanwhile
            if cmdline:
                seen[pid] = (cmdline, environ)
        time.sleep(0.002)
    worker.join()
    assert not errors, errors
    assert seen, "restic ended before its /proc entry could be read"
    for cmdline, environ in seen.values():
        assert b"backup" in cmdline.split(b"\0")
        assert b"s3cret" not in cmdline and PASSWORD.encode() not in cmdline
        assert f"RESTIC_REPOSITORY={url}".encode() in environ.split(b"\0")


def _restic_children() -> list[int]:
    """The pids of this process's children that run restic."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and "restic" in stat_file.read_text():
                found.append(int(stat_file.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.restic
def test_ignore_flags_are_passed_only_when_asked_for(tmp_path: Path) -> None:
    mover, log = _recording_mover(tmp_path, str(tmp_path / "repo"))
    source = tmp_path / "volume"
    make_tree(source)
    mover.ensure_repository()
    first = mover.backup(source, host="vm1", tags={"app": "flags"}, ignore_inode=True)
    mover.backup(source, host="vm1", tags={"app": "flags"}, parent=first.snapshot_id)
    fast = mover.backup(
        source,
        host="vm1",
        tags={"app": "flags"},
        parent=first.snapshot_id,
        ignore_inode=True,
        ignore_ctime=True,
    )
    backups = [call["args"] for call in _calls(log) if call["command"] == "backup"]
    wanted = ("--parent", "--ignore-inode", "--ignore-ctime")
    flags = [[arg for arg in argv if arg in wanted] for argv in backups]
    assert flags == [
        [],  # no parent: the ignore flags mean nothing
        ["--parent"],
        ["--parent", "--ignore-inode", "--ignore-ctime"],
    ]
    assert fast.files_unmodified == 3 and fast.files_new == 0


def test_restic_message_drops_terminal_codes() -> None:
    """restic clears the progress line before "signal interrupt received" even on a pipe."""
    from cleancut.mover.restic import _restic_message

    stderr = b"\x1b[2Ksignal interrupt received, cleaning up\n"
    assert _restic_message(stderr) == "signal interrupt received, cleaning up"
