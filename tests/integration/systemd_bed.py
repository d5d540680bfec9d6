"""A real systemd as PID 1, in a ``systemd-nspawn`` container of this machine's own system.

systemd does not run as init on the test machines, so ``systemctl`` and the units
``cleancut schedule install`` writes would never run for real. This boots one: the
container's root is a scratch folder holding a copy of ``/etc`` (without the units this
machine enables, so only systemd's own services start), ``/usr`` bound read-only, and
the checkout, the Python installation and a data folder bound at their own paths. It has
no network but loopback (``--private-network``), its own /dev and /run, and root's
capabilities as nspawn keeps them (CAP_SYS_ADMIN among them: fsfreeze works on a file
system mounted before it starts and bound in).

Commands run inside with ``nsenter`` into the container's namespaces. The container is
powered off (SIGTERM to nspawn) on exit, and killed when that does not end it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

CHECKOUT = Path(__file__).resolve().parents[2]
_ENABLED = ("*.wants", "*.requires", "*.service", "*.timer", "*.socket", "*.target")


def nspawn_missing() -> str | None:
    """Why this machine cannot boot the container, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (make setup installs systemd-container)"
    return None


class SystemdContainer:
    """A booted container; ``run`` executes a command inside it."""

    def __init__(self, scratch: Path, binds: list[Path]) -> None:
        self.scratch = scratch
        self.root = scratch / "root"
        self.binds = binds
        self.name = f"cleancut-{uuid.uuid4().hex[:8]}"
        self.log = scratch / "nspawn.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def __enter__(self) -> SystemdContainer:
        self._skeleton()
        binds = [f"--bind={path}" for path in self.binds]
        binds += [f"--bind-ro={path}" for path in _read_only()]
        argv = [
            "systemd-nspawn", f"--directory={self.root}", f"--machine={self.name}",
            "--register=no", "--keep-unit", "--private-network", "--console=passive",
            "--bind-ro=/usr", *binds, "--boot",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        try:
            self.leader = self._find_leader()
            private = Path(f"/proc/{self.leader}/root/run/systemd/private")
            _wait_for(private.exists, 60, f"systemd's socket {private}")  # before it: no bus
            state = self.run("systemctl", "is-system-running", "--wait", timeout=120)
            assert state.stdout.strip() in ("running", "degraded"), (state, self.journal())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container to power off
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)  # ends its whole pid namespace
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            Path("/run/systemd/nspawn/propagate", self.name).rmdir()
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container, as root, with its output."""
        return subprocess.run(
            ["nsenter", f"--target={self.leader}", "--all", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "NO_COLOR": "1"},
        )

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["nsenter", f"--target={self.leader}", "--all", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "NO_COLOR": "1"},
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of ``unit``: property -> value."""
        done = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        assert done.returncode == 0, done.stderr
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def journal(self, unit: str | None = None) -> str:
        argv = ["journalctl", "--no-pager", "--output=cat"] + (["--unit", unit] if unit else [])
        done = self.run(*argv)
        return (
            done.stdout + done.stderr + (self.log.read_text(errors="replace") if not unit else "")
        )

    # -- plumbing -----------------------------------------------------------------------

    def _skeleton(self) -> None:
        """The container's root: merged-/usr links, os-release (nspawn looks before it
        binds /usr), and /etc with none of this machine's own units enabled."""
        self.root.mkdir(mode=0o755)
        for folder in ("usr/lib", "var", "run", "tmp", "proc", "sys", "dev", "root"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        for link in ("bin", "lib", "lib64", "sbin"):
            if Path("/", link).is_symlink():
                (self.root / link).symlink_to(os.readlink(Path("/", link)))
        shutil.copy2("/usr/lib/os-release", self.root / "usr/lib/os-release")
        subprocess.run(["cp", "-a", "/etc", str(self.root / "etc")], check=True)
        units = self.root / "etc/systemd/system"
        for pattern in _ENABLED:
            for path in units.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def _find_leader(self) -> int:
        """The container's PID 1 as this machine sees it: nspawn's child running systemd."""
        assert self._proc is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited: {self.log.read_text()}")
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    command, rest = stat.rsplit(")", 1)
                    if int(rest.split()[1]) == self._proc.pid and command.endswith("(systemd"):
                        return int(entry.name)
            time.sleep(0.1)
        raise AssertionError(f"the container's systemd never started: {self.log.read_text()}")


def _wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {within:.0f}s")
        time.sleep(0.05)


def _read_only() -> list[Path]:
    """The checkout, and the Python installation its .venv points to unless under /usr."""
    paths = [CHECKOUT]
    base = Path(sys.base_prefix).resolve()
    if not base.is_relative_to("/usr"):
        paths.append(base)
    return paths
