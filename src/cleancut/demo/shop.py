"""The demo's sample application "shop": two SQLite databases, a receipts share, its load.

Three resources on three volumes, as a small real shop would have them:

* ``orders/orders.db``     — one row per order;
* ``invoices/invoices.db`` — one invoice per order, in another database (another VM's disk);
* ``receipts/<id>.txt``    — one receipt file per order, on a file share.

Both databases run in WAL mode with ``synchronous=NORMAL``: commits are cheap (no fsync per
commit), readers never block the writer, and a snapshot of the volume (database file plus
its ``-wal``) recovers by itself when opened — the state a freeze or a crash leaves. Every
connection has a long busy timeout, so the shop waits (instead of failing) while a backup
holds ``BEGIN IMMEDIATE`` on a database.

:class:`LoadGenerator` runs :mod:`cleancut.demo.load` as a subprocess;
:func:`write_hook_scripts` writes the pre/post hooks that quiesce it through
:mod:`cleancut.demo.control`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cleancut.demo import control
from cleancut.demo.shopdb import ShopTargets, create_tables
from cleancut.errors import CleancutError, HookSecurityError

RESOURCES = ("orders", "invoices", "receipts")
"""The shop's resource names, which are also its volume folder names."""


@dataclass(frozen=True)
class ShopPaths:
    """Where the shop's three resources live."""

    orders_db: Path
    invoices_db: Path
    receipts_dir: Path

    def resource(self, name: str) -> Path:
        """The path of resource ``name`` (one of :data:`RESOURCES`)."""
        paths = {
            "orders": self.orders_db,
            "invoices": self.invoices_db,
            "receipts": self.receipts_dir,
        }
        if name not in paths:
            raise CleancutError(f"unknown shop resource {name!r}; expected one of {RESOURCES}")
        return paths[name]

    def targets(self) -> ShopTargets:
        """The same shop as database targets (see :mod:`cleancut.demo.shopdb`)."""
        return ShopTargets(str(self.orders_db), str(self.invoices_db), self.receipts_dir)


def receipt_name(order_id: int) -> str:
    """The file name of an order's receipt."""
    return f"{order_id}.txt"


def create_shop(orders_dir: Path, invoices_dir: Path, receipts_dir: Path) -> ShopPaths:
    """Create (or reuse) the shop's databases and receipts folder in three volume folders."""
    for folder in (orders_dir, invoices_dir, receipts_dir):
        folder.mkdir(parents=True, exist_ok=True)
    shop = ShopPaths(orders_dir / "orders.db", invoices_dir / "invoices.db", receipts_dir)
    try:
        create_tables(shop.targets(), create=True)
    except sqlite3.Error as exc:
        raise CleancutError(f"cannot create the shop databases in {orders_dir}: {exc}") from exc
    return shop


def _check_trusted_folder(folder: Path) -> None:
    """Refuse a hook folder the hook-security rules would refuse (DESIGN.md §4), early."""
    euid = os.geteuid()
    for part in (folder, *folder.parents):
        st = part.stat()
        if st.st_uid not in (0, euid):
            fix = f"use a folder owned by root or uid {euid}"
            raise HookSecurityError(str(part), f"owned by uid {st.st_uid}", fix)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            fix = f"chmod go-w {part}, or put the hooks under a folder only its owner can write"
            raise HookSecurityError(str(part), "group/other may write to it", fix)


def write_hook_scripts(folder: Path, python: str, socket: Path) -> tuple[Path, Path]:
    """Write the shop's ``pre.sh`` (pause) and ``post.sh`` (resume) hooks into ``folder``.

    The scripts call an absolute interpreter path, so they work in the clean environment
    hooks run in; they are mode 0755 and owned by the caller, as the hook-security rules
    require. ``folder`` and its parents must be writable by their owner only.
    """
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    _check_trusted_folder(folder)
    scripts = []
    for name, command, purpose in (
        ("pre.sh", "pause", "finish the order in flight and pause writing"),
        ("post.sh", "resume", "resume writing"),
    ):
        argv = [python, "-m", "cleancut.demo.control", command, "--socket", str(socket)]
        text = (
            "#!/bin/sh\n"
            f"# cleancut demo hook: ask the shop to {purpose}.\n"
            f"exec {shlex.join(argv)}\n"
        )
        path = folder / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
        scripts.append(path)
    return scripts[0], scripts[1]


@dataclass(frozen=True)
class LoadStats:
    """What the load generator reported when it stopped."""

    orders: int
    seconds: float
    pauses: int
    auto_resumes: int
    error: str | None
    returncode: int
    stderr: str


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Last resort (garbage collection or interpreter exit): never leave the load running."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class LoadGenerator:
    """The shop's load as a subprocess in its own process group; a context manager.

    ``start()`` returns once the control socket answers; ``stop()`` sends SIGTERM (the
    generator finishes the order in flight) and returns its :class:`LoadStats`.
    """

    def __init__(
        self,
        shop: ShopPaths | ShopTargets,
        socket: Path,
        *,
        step_delay: float = 0.002,
        auto_resume: float = 60.0,
        busy_timeout: float = 60.0,
        python: str = sys.executable,
    ) -> None:
        self.shop = shop
        self.socket = socket
        targets = shop.targets() if isinstance(shop, ShopPaths) else shop
        self.argv = [
            python, "-m", "cleancut.demo.load",
            "--orders-db", targets.orders,
            "--invoices-db", targets.invoices,
            "--receipts-dir", str(targets.receipts_dir),
            "--socket", str(socket),
            "--step-delay", str(step_delay),
            "--auto-resume", str(auto_resume),
            "--busy-timeout", str(busy_timeout),
        ]  # fmt: skip
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def pid(self) -> int | None:
        """The generator's pid (also its process group id) while it runs."""
        return self._proc.pid if self._proc else None

    def start(self, ready_timeout: float = 10.0) -> None:
        """Start the generator and wait until its control socket answers."""
        if self._proc is not None:
            raise CleancutError("the shop's load generator is already running")
        # Kept open for the generator's lifetime and closed in stop(), hence no `with`.
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, _kill_group, self._proc)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self._proc.poll() is not None:
                stats = self.stop()
                raise CleancutError(f"the load generator exited at start: {stats.stderr.strip()}")
            try:
                control.send(self.socket, "status", timeout=1.0)
                return
            except CleancutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        """The generator's own view: orders written this run, paused or not."""
        answer: dict[str, Any] = json.loads(control.send(self.socket, "status"))
        return answer

    def pause(self, timeout: float = 10.0) -> None:
        """Ask the shop to finish the order in flight and pause (what the pre-hook does)."""
        control.pause(self.socket, timeout=timeout)

    def resume(self, timeout: float = 10.0) -> None:
        """Let the shop write again (what the post-hook does)."""
        control.resume(self.socket, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> LoadStats:
        """SIGTERM, wait (SIGKILL to the group after ``timeout``), and return the statistics."""
        proc, err = self._proc, self._stderr
        if proc is None or err is None:
            raise CleancutError("the shop's load generator was not started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
        err.seek(0)
        stderr = err.read()
        err.close()
        self._proc = self._stderr = None
        if self._finalizer is not None:
            self._finalizer.detach()
        return _parse_stats(out, proc.returncode, stderr)

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self.stop()


def _parse_stats(stdout: str, returncode: int, stderr: str) -> LoadStats:
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        data = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        data = {}
    return LoadStats(
        orders=int(data.get("orders", 0)),
        seconds=float(data.get("seconds", 0.0)),
        pauses=int(data.get("pauses", 0)),
        auto_resumes=int(data.get("auto_resumes", 0)),
        error=data.get("error"),
        returncode=returncode,
        stderr=stderr,
    )
