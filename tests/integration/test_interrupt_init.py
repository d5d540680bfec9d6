"""Ctrl-C while the first backup initialises the repository.

The terminal sends SIGINT to cleancut and to its ``restic init`` at once; restic stops
first and exits 130. The backup must end as an interrupted one (exit 130), not as a
restic failure (exit 7), and the next backup must work: an init cut short may leave a
repository behind, never a broken one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.cutlib import CLEANCUT, _env, children, copy_app

pytestmark = pytest.mark.restic


def _restic_init_below(pid: int) -> bool:
    """A ``restic init`` child of ``pid`` that has installed its SIGINT handler (before
    that, Go's runtime start-up keeps the disposition it inherited)."""
    for child in children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        if b"restic" in argv[0] and b"init" in argv:
            caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
            return bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started", ["from a terminal", "with SIGINT ignored"])
def test_ctrl_c_during_restic_init_exits_130_and_the_next_backup_works(
    trusted_dir: Path, started: str
) -> None:
    """ "With SIGINT ignored" is ``cleancut backup &`` in a script: cleancut never sees
    the Ctrl-C, but restic (Go re-enables SIGINT) does and stops."""
    app = copy_app(trusted_dir)
    proc = subprocess.Popen(
        [*CLEANCUT, "backup", str(app.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, as a terminal gives a command
        preexec_fn=_ignore_sigint if started == "with SIGINT ignored" else None,
    )
    try:
        deadline = time.monotonic() + 60
        while not _restic_init_below(proc.pid):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "restic init never started"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "restic failed" not in stderr and "Traceback" not in stderr, stderr

    # an unfrozen copy is a crash-level RP: exit 3 (degraded) by design, not a failure
    code, manifest, stderr = app.backup_json()
    assert code == 3 and manifest is not None, stderr
    restored = trusted_dir / "restored"
    done = app.run("restore", manifest["rp_id"], "--to", str(restored))
    assert done.returncode == 0, done.stderr
    assert [p.read_text() for p in restored.rglob("receipt.txt")] == ["paid\n"]
