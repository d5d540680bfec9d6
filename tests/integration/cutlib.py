"""Builders for end-to-end cut tests: config files, hook scripts, and running the real CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLEANCUT = [sys.executable, "-m", "cleancut"]


def write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return path


def make_db(path: Path, rows: int, *, wal: bool = True) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row{i}",) for i in range(rows)])
    conn.commit()
    conn.close()


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


@dataclass
class App:
    """An application config written into a trusted folder."""

    root: Path
    config: Path

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    def run(
        self, command: str, *args: str, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        """``cleancut COMMAND CONFIG ARGS``; COMMAND may be two words ("catalog rebuild")."""
        argv = [*CLEANCUT, *command.split(), str(self.config), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=_env(), check=False
        )

    def backup_json(self, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
        """Run ``backup --json``; the result manifest (or None) and stderr."""
        done = self.run("backup", "--json", *extra)
        manifest = None
        for line in done.stdout.splitlines():
            event = json.loads(line)
            if event.get("event") == "result":
                manifest = event["manifest"]
        return done.returncode, manifest, done.stderr


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["NO_COLOR"] = "1"
    return env


def make_app(
    root: Path,
    guests: dict[str, str],
    *,
    on_failure: str = "degrade",
    freeze_timeout: str = "10s",
) -> App:
    """Write guest configs (mode 600) and the application config naming them."""
    lines = [
        'name = "itest"',
        f'freeze_timeout = "{freeze_timeout}"',
        f'on_failure = "{on_failure}"',
        f'catalog = "{root / "catalog.sqlite"}"',
        "",
        "[repository]",
        f'url = "{root / "repository"}"',
        'password_file = "repository.pass"',
        "",
    ]
    for host, text in guests.items():
        guest = write_private(root / f"guest-{host}.toml", text)
        lines += [f"[hosts.{host}]", 'connect = "local"', f'guest_config = "{guest}"', ""]
    write_private(root / "repository.pass", "correct horse battery staple\n")
    config = write_private(root / "app.toml", "\n".join(lines))
    return App(root, config)


def copy_app(root: Path) -> App:
    """One local host whose share is copied unfrozen: a backup commits at crash level
    (exit 3, degraded by design) without a mount or root."""
    data = root / "share"
    data.mkdir()
    (data / "receipt.txt").write_text("paid\n", encoding="utf-8")
    guest = f'[volumes.share]\npath = "{data}"\nsnapshot = "copy"\nfreeze = false\n'
    return make_app(root, {"vm1": guest})


def image_volume(name: str, path: Path) -> str:
    return f'[volumes.{name}]\npath = "{path}"\nsnapshot = "image"\nfreeze = true\n'


def sqlite_db(name: str, path: Path, volume: str) -> str:
    return f'[databases.{name}]\nkind = "sqlite"\npath = "{path}"\nvolume = "{volume}"\n'


def hook(name: str, pre: Path | None, post: Path | None, **extra: Any) -> str:
    lines = ["[[hooks]]", f'name = "{name}"']
    if pre is not None:
        lines.append(f'pre = ["{pre}"]')
    if post is not None:
        lines.append(f'post = ["{post}"]')
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def wait_gone(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` (not our child) has exited."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
        if "State:\tZ" in status:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running after {timeout}s")
        time.sleep(0.05)
