"""The restore drill (``cleancut verify``): a recovery point is only as good as its restore.

The drill restores one RP into a sandbox folder (images extracted, every writer's restore
step applied), starts each database server on its restored files — its own run folder
and a free port on 127.0.0.1, so it never meets the live servers — and runs, in order:
the file-system checks of the restore, each database's built-in checks, and the
application's own cross-resource checks from ``[[checks]]``. The **RTO** is measured from
the start of the restore to the moment every database answers; each server's own
recovery time is read from its log. Servers are stopped and the sandbox removed at the
end, on every path, unless ``keep`` asks for it to stay.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleancut.config.application import AppCheck
from cleancut.config.load import LoadedApp
from cleancut.errors import CleancutError
from cleancut.manifest import Manifest, WriterRecord
from cleancut.mover.base import Mover
from cleancut.restore import RestoredMember, RestoreReport, restore_rp
from cleancut.writers.server import SERVER_KINDS, CheckResult, DatabaseServer, server_class

#: The most output of one check kept in the report.
_OUTPUT_LIMIT = 4000


@dataclass
class StartedDatabase:
    """One database server of the drill: where it runs and how long it took."""

    host: str
    name: str
    kind: str
    uri: str
    datadir: Path
    start_seconds: float | None = None
    recovery_seconds: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "name": self.name,
            "kind": self.kind,
            "uri": self.uri,
            "datadir": str(self.datadir),
            "start_seconds": self.start_seconds,
            "recovery_seconds": self.recovery_seconds,
            "error": self.error,
        }


@dataclass
class VerifyReport:
    """What the drill found."""

    app: str
    rp_id: str
    sandbox: Path
    kept: bool = False
    restore_seconds: float | None = None
    rto_seconds: float | None = None
    databases: list[StartedDatabase] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "rp": self.rp_id,
            "ok": self.ok,
            "sandbox": str(self.sandbox),
            "kept": self.kept,
            "restore_seconds": self.restore_seconds,
            "rto_seconds": self.rto_seconds,
            "databases": [db.as_dict() for db in self.databases],
            "checks": [check.as_dict() for check in self.checks],
        }


def sandbox_base() -> Path:
    """Where sandboxes go by default: root-owned state as root, the user's cache otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/cleancut/verify")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cleancut" / "verify"


def env_name(prefix: str, name: str) -> str:
    """``CLEANCUT_DB_ORDERS`` for ``orders``: upper-cased, ``-`` and ``.`` as ``_``."""
    return f"CLEANCUT_{prefix}_" + re.sub(r"[^A-Z0-9_]", "_", name.upper())


def verify_rp(
    loaded: LoadedApp,
    manifest: Manifest,
    mover: Mover,
    *,
    sandbox: Path | None = None,
    keep: bool = False,
    say: Callable[[str], None] = lambda _text: None,
) -> VerifyReport:
    """Restore ``manifest`` into a sandbox, start its databases, run every check."""
    base = sandbox or sandbox_base()
    base.mkdir(mode=0o711, parents=True, exist_ok=True)  # servers run as their own users
    root = Path(tempfile.mkdtemp(prefix=f"{manifest.app}-{manifest.rp_id[:12]}-", dir=base))
    root.chmod(0o755)  # database servers run as their own users and must reach their files
    report = VerifyReport(manifest.app, manifest.rp_id, root, kept=keep)
    running: list[tuple[DatabaseServer, StartedDatabase]] = []
    try:
        started = time.monotonic()
        say(f"restoring {manifest.rp_id} into {root}")
        restored = restore_rp(manifest, mover, root / "restored", extract=True)
        report.restore_seconds = time.monotonic() - started
        report.checks += _restore_checks(restored)
        for record in manifest.writers:
            if record.kind in SERVER_KINDS:
                server, db = _start(record, restored, root, say)
                report.databases.append(db)
                report.checks.append(_started_check(db))
                if server is not None:
                    running.append((server, db))
        if all(db.error is None for db in report.databases):
            report.rto_seconds = time.monotonic() - started
        for server, db in running:
            say(f"checking {db.host}/{db.name}")
            report.checks += [_prefixed(f"{db.host}/{db.name}", c) for c in server.builtin_checks()]
        env = _check_environment(manifest, restored, report.databases)
        for check in loaded.config.checks:
            say(f"running check {check.name!r}")
            report.checks.append(run_check(check, loaded.path.parent, env))
    finally:
        for server, _db in reversed(running):
            server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return report


def _restore_checks(restored: RestoreReport) -> list[CheckResult]:
    """The restore's own findings as checks: each image's fsck, each SQLite database."""
    checks = []
    for member in restored.members:
        label = f"{member.host}/{member.resource}"
        if member.fsck_ok is not None:
            checks.append(
                CheckResult(f"{label}: file system check", member.fsck_ok, member.fsck_output)
            )
        for path, ok in member.databases.items():
            checks.append(CheckResult(f"{label}: sqlite {path} integrity_check", ok))
    return checks


def _start(
    record: WriterRecord, restored: RestoreReport, root: Path, say: Callable[[str], None]
) -> tuple[DatabaseServer | None, StartedDatabase]:
    """Start one restored database; a failure is recorded (and becomes a failed check)."""
    datadir = _restored_path(record, "data directory", restored)
    rundir = root / "run" / f"{record.host}-{record.database}"
    if datadir is None:
        db = StartedDatabase(record.host, record.database, record.kind, "", Path())
        db.error = "its data directory is not in the restored files"
        return None, db
    server = server_class(record.kind)(datadir, rundir)
    db = StartedDatabase(record.host, record.database, record.kind, server.uri, datadir)
    say(f"starting {record.kind} {record.host}/{record.database} on port {server.port}")
    try:
        db.start_seconds = server.start()
    except CleancutError as exc:
        server.stop()
        db.error = exc.message
        return None, db
    db.recovery_seconds = server.recovery_seconds()
    return server, db


def _started_check(db: StartedDatabase) -> CheckResult:
    name = f"{db.host}/{db.name}: starts with no manual step"
    if db.error is not None:
        return CheckResult(name, False, db.error)
    recovery = "none" if db.recovery_seconds is None else f"{db.recovery_seconds:.2f}s"
    return CheckResult(name, True, f"answering after {db.start_seconds:.2f}s; recovery {recovery}")


def _restored_path(record: WriterRecord, label: str, restored: RestoreReport) -> Path | None:
    """Where ``label`` (a writer's recorded location) is in the restored files."""
    files = record.details.get("files", {})
    place = files.get(label) if isinstance(files, dict) else None
    if not isinstance(place, dict):
        return None
    member = _member(restored, record.host, str(place.get("volume")))
    if member is None or member.files is None:
        return None
    path = member.files / str(place.get("path", "."))
    return path if path.exists() else None


def _member(restored: RestoreReport, host: str, volume: str) -> RestoredMember | None:
    for member in restored.members:
        if member.host == host and member.resource == volume:
            return member
    return None


def _check_environment(
    manifest: Manifest, restored: RestoreReport, started: list[StartedDatabase]
) -> dict[str, str]:
    """``CLEANCUT_DB_<NAME>`` and ``CLEANCUT_VOLUME_<NAME>`` for the application's checks.

    A database server's value is its URI; a SQLite database's is its restored file. Names
    are the resource names of the guest configs; when two hosts use one name, only the
    host-qualified ``CLEANCUT_DB_<HOST>_<NAME>`` form is set for it.
    """
    values: dict[tuple[str, str, str], str] = {}
    for member in restored.members:
        path = member.files or member.path
        values[("VOLUME", member.host, member.resource)] = str(path)
    for db in started:
        if db.error is None:
            values[("DB", db.host, db.name)] = db.uri
    for record in manifest.writers:
        if record.kind == "sqlite":
            file = _restored_path(record, "database file", restored)
            if file is not None:
                values[("DB", record.host, record.database)] = str(file)
    env: dict[str, str] = {}
    for (prefix, host, name), value in values.items():
        env[env_name(prefix, f"{host}_{name}")] = value
        same = [k for k in values if k[0] == prefix and k[2] == name]
        if len(same) == 1:
            env[env_name(prefix, name)] = value
    return env


def run_check(check: AppCheck, folder: Path, extra: dict[str, str]) -> CheckResult:
    """Run one application check (argv, no shell) in ``folder`` with the sandbox's names."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **extra}
    try:
        done = subprocess.run(
            check.run,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=check.timeout,
            check=False,
        )
    except FileNotFoundError:
        return CheckResult(check.name, False, f"{check.run[0]}: no such program (in {folder})")
    except subprocess.TimeoutExpired:
        return CheckResult(check.name, False, f"did not finish within {check.timeout:g}s")
    except OSError as exc:
        return CheckResult(check.name, False, f"cannot run {check.run[0]}: {exc}")
    output = (done.stdout + done.stderr).strip()[-_OUTPUT_LIMIT:]
    status = "" if done.returncode == 0 else f"exit status {done.returncode}\n"
    return CheckResult(check.name, done.returncode == 0, status + output)


def _prefixed(prefix: str, check: CheckResult) -> CheckResult:
    return CheckResult(f"{prefix}: {check.name}", check.ok, check.detail)
