"""What a MariaDB/MySQL data directory holds, read from its files: the facts a server
started on a copy needs (InnoDB's page size, the binary log's name), who owns it, and the
clean-up a restored copy gets (stale pid and socket files, ownership).
"""

from __future__ import annotations

import os
import pwd
import stat
import struct
from pathlib import Path


def innodb_page_size(datadir: Path) -> int | None:
    """InnoDB's page size, from the page numbers in ``ibdata1`` (page 1 and 2 follow page 0
    at one page size only); None when there is no ``ibdata1``."""
    try:
        with (datadir / "ibdata1").open("rb") as data:
            head = data.read(3 * 65536)
    except OSError:
        return None
    for size in (4096, 8192, 16384, 32768, 65536):
        if len(head) < 3 * size:
            break
        numbers = [struct.unpack(">I", head[n * size + 4 : n * size + 8])[0] for n in (1, 2)]
        if numbers == [1, 2]:
            return size
    return None


def binlog_basename(datadir: Path) -> str | None:
    """The binary log's base name when ``datadir`` holds one (``mysql-bin`` for
    ``mysql-bin.index`` listing ``./mysql-bin.000001``); relay logs do not count."""
    for index in sorted(datadir.glob("*.index")):
        name = index.name[: -len(".index")]
        if "relay" in name:
            continue
        try:
            first = index.read_text(errors="replace").splitlines()[:1]
        except OSError:
            continue
        if first and Path(first[0]).name.startswith(name + "."):
            return name
    return None


def closed_ancestor(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder above ``path`` that ``user`` may not enter (no search bit for it)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for folder in reversed(path.absolute().parents):
        info = folder.stat()
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return folder
    return None


def owner_of(path: Path) -> str:
    """The user name owning ``path``."""
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def remove_stale_files(datadir: Path) -> list[str]:
    """Remove the pid files, sockets and socket lock files a copy of a running server's
    data directory holds (a server that finds them may refuse to start); their names."""
    removed = []
    for entry in sorted(datadir.iterdir()):
        mode = entry.lstat().st_mode
        stale = entry.suffix == ".pid" or entry.name.endswith(".sock.lock")
        if (stale and stat.S_ISREG(mode)) or stat.S_ISSOCK(mode):
            entry.unlink()
            removed.append(entry.name)
    return removed


def chown_tree(root: Path, uid: int, gid: int) -> int:
    """Give ``root`` and everything under it to ``uid:gid`` (symlinks themselves, never
    their targets); how many entries changed."""
    changed = 0
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if (info.st_uid, info.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
                changed += 1
    return changed
