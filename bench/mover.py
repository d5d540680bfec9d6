"""Mover overhead: ``cleancut backup`` of one volume against bare ``restic backup`` of the
same bytes, in the same run, for a first and a second (unchanged) backup.

One ext4 disk image on an XFS datastore holds the data (deterministic from a seed: three
quarters random, one quarter a block repeated in every file). Two comparisons:

* **image**: cleancut with the volume as ``snapshot = "image"``, ``freeze = true`` (what
  users run; it uploads the whole disk image) against ``restic backup`` of a
  ``cp --reflink=always`` copy of that image, made fresh before each run (a new file each
  time, as cleancut's clone is, so restic reads it whole both times);
* **copy**: cleancut with the volume as ``snapshot = "copy"``, ``freeze = true`` (it
  copies the tree to staging, then uploads the copy) against ``restic backup`` of the
  mounted directory itself.

Each side has its own repository, fresh for the first backup. The timed commands are the
whole ``cleancut backup CONFIG`` (a subprocess; it initialises its repository on first
use) and ``restic init`` (first backup only) plus ``restic -r REPO backup PATH``. Before
each timed command the source is read once, so both sides start from a warm page cache.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.common import machine_report, require_root, say, table, workspace, write_private
from cleancut.demo.disks import Datastore, Disk
from cleancut.errors import EXIT_DEGRADED, EXIT_OK

SEED = 20261127
FILE_MIB = 16
SHARED_MIB = 4
MIB = 1024 * 1024

IMAGE_FIRST = "image volume, first backup"
IMAGE_SECOND = "image volume, second backup (unchanged)"
COPY_FIRST = "copy volume, first backup"
COPY_SECOND = "copy volume, second backup (unchanged)"
#: Every row the mover table prints, in order (the smoke test checks each one).
FIGURES = (IMAGE_FIRST, IMAGE_SECOND, COPY_FIRST, COPY_SECOND)

_TIMEOUT = 3600.0


def fill(folder: Path, mib: int, seed: int = SEED) -> int:
    """Write ``mib`` MiB of files into ``folder``, the same bytes for the same seed."""
    rng = random.Random(seed)
    shared = rng.randbytes(min(SHARED_MIB, FILE_MIB // 4) * MIB)
    written = 0
    index = 0
    while written < mib * MIB:
        size = min(FILE_MIB * MIB, mib * MIB - written)
        own = max(0, size - len(shared))
        data = b"".join(rng.randbytes(MIB) for _ in range(own // MIB))
        data += rng.randbytes(own % MIB) + shared[: size - own]
        (folder / f"part-{index:04d}.bin").write_bytes(data)
        written += size
        index += 1
    os.sync()
    return index


def warm(path: Path) -> None:
    """Read every file under ``path`` once (the page cache then serves both sides alike)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with file.open("rb") as stream:
            while stream.read(8 * MIB):
                pass


def _timed(argv: list[str], env: dict[str, str] | None, ok: tuple[int, ...] = (0,)) -> float:
    """Run ``argv`` to the end; its wall-clock seconds. Fails loudly on an unexpected exit."""
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=_TIMEOUT)
    seconds = time.monotonic() - started
    if done.returncode not in ok:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return seconds


def cleancut_command() -> list[str]:
    """The ``cleancut`` executable beside this Python, else ``python -m cleancut``."""
    script = Path(sys.executable).with_name("cleancut")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cleancut"]


@dataclass(frozen=True)
class Bench:
    """The workspace: the data disk, the password file, and where configs and repos go."""

    root: Path
    disk: Disk
    password: Path

    def restic_env(self) -> dict[str, str]:
        """The caller's environment for bare restic, with our password and no other repo."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env["RESTIC_PASSWORD_FILE"] = str(self.password)
        return env

    def app_config(self, name: str, snapshot: str) -> Path:
        """Write the guest and application configs of one comparison; the app config."""
        guest = self.root / "etc" / f"guest-{name}.toml"
        write_private(
            guest,
            # the copy of a 1 GiB volume is made inside the freeze: allow the app's 5m
            f'staging = "{self.root / "staging"}"\nmax_freeze_timeout = "5m"\n\n'
            f'[volumes.data]\npath = "{self.disk.mountpoint}"\n'
            f'snapshot = "{snapshot}"\nfreeze = true\n',
        )
        app = self.root / "etc" / f"bench-{name}.toml"
        write_private(
            app,
            f'name = "bench-{name}"\nfreeze_timeout = "5m"\non_failure = "degrade"\n'
            f'catalog = "{self.root / f"{name}.catalog.sqlite"}"\n\n'
            f'[repository]\nurl = "{self.repo("cleancut", name)}"\n'
            f'password_file = "{self.password}"\n\n'
            f'[hosts.app1]\nconnect = "local"\nguest_config = "{guest}"\n',
        )
        return app

    def repo(self, side: str, name: str) -> Path:
        """The repository of one side (cleancut or bare) of one comparison."""
        return self.root / "repos" / f"{side}-{name}"


def _cleancut(app: Path, source: Path) -> float:
    warm(source)
    # exit 3 (EXIT_DEGRADED): committed at file-system level, as a volume without hooks is
    return _timed([*cleancut_command(), "backup", str(app)], None, ok=(EXIT_OK, EXIT_DEGRADED))


def _bare(bench: Bench, name: str, source: Path, warmed: Path, first: bool) -> tuple[float, float]:
    """Seconds of bare restic: (init, backup); init is 0 after the first backup."""
    env = bench.restic_env()
    repo = str(bench.repo("bare", name))
    init = _timed(["restic", "-r", repo, "init"], env) if first else 0.0
    warm(warmed)
    return init, _timed(["restic", "-r", repo, "backup", str(source)], env)


def _fresh_copy(image: Path) -> Path:
    """A new ``cp --reflink=always`` copy of ``image`` at a fixed path on its datastore."""
    copy = image.parent.parent / "bare" / image.name
    copy.parent.mkdir(exist_ok=True)
    copy.unlink(missing_ok=True)
    subprocess.run(["cp", "--reflink=always", str(image), str(copy)], check=True)
    return copy


def compare(bench: Bench, name: str, snapshot: str) -> list[tuple[float, float, float]]:
    """First and second backup of one comparison: (cleancut, bare init, bare backup) each."""
    app = bench.app_config(name, snapshot)
    results = []
    for first in (True, False):
        # image: warm the image itself, never the copy, so that bare restic reads its copy
        # through the same (datastore) caches as cleancut reads its fresh clone
        warmed = bench.disk.image if snapshot == "image" else bench.disk.mountpoint
        source = _fresh_copy(bench.disk.image) if snapshot == "image" else warmed
        seconds = _cleancut(app, warmed)
        init, backup = _bare(bench, name, source, warmed, first)
        which = "first" if first else "second"
        say(f"{name}: {which} backup: cleancut {seconds:.2f} s, restic {init + backup:.2f} s")
        results.append((seconds, init, backup))
    return results


def report(mib: int, figures: dict[str, tuple[float, float, float]], seconds: float) -> str:
    """The mover table: seconds on each side and their ratio."""
    rows = []
    for label in FIGURES:
        ours, init, backup = figures[label]
        bare = init + backup
        rows.append([label, f"{ours:.2f}", f"{bare:.2f}", f"{ours / bare:.2f}"])
    inits = [figures[label][1] for label in (IMAGE_FIRST, COPY_FIRST)]
    return "\n".join(
        [
            f"mover overhead: `cleancut backup` against bare `restic backup` of the same "
            f"{mib} MiB, wall clock (the whole run took {seconds:.0f} s)",
            "",
            table(["backup", "cleancut s", "bare restic s", "ratio"], rows),
            "",
            "goal: ratio <= 1.10",
            "image: cleancut uploads its FICLONE of the disk image; bare restic backs up a",
            "  fresh `cp --reflink=always` copy of the same image (a new file each run, as the",
            "  clone is)",
            "copy: cleancut copies the tree to staging (frozen meanwhile) and uploads the copy;",
            "  bare restic backs up the mounted directory itself; the second time both skip the",
            "  unchanged files (cleancut names the previous RP's snapshot as restic's parent),",
            "  but cleancut has copied the whole tree first: that copy is the copy provider's cost",
            "bare restic's first backup includes its `restic init` "
            f"({', '.join(f'{s:.2f} s' for s in inits)}), as cleancut's first backup inits its own",
        ]
    )


def run(mib: int = 1024) -> int:
    """Build the disk, fill it, time both sides of both comparisons; print the figures."""
    require_root("mover")
    started = time.monotonic()
    disk_mib = max(round(mib * 1.2), mib + 48)
    with ExitStack() as stack:
        root = workspace("mover-")
        stack.callback(subprocess.run, ["rm", "-rf", "--one-file-system", str(root)], check=False)
        store = stack.enter_context(
            Datastore(root / "hypervisor", size_mib=max(512, disk_mib + 512), remove_images=True)
        )
        disk = store.add_disk("data", root / "vm" / "srv" / "data", size_mib=disk_mib)
        for folder in ("etc", "staging", "repos"):
            (root / folder).mkdir(mode=0o700)
        password = root / "repository.pass"
        write_private(password, f"bench-{random.Random(SEED).getrandbits(64):x}\n")
        say(f"workspace {root}: filling a {disk_mib} MiB ext4 disk with {mib} MiB")
        fill(disk.mountpoint, mib)
        bench = Bench(root, disk, password)
        image = compare(bench, "image", "image")
        copy = compare(bench, "copy", "copy")
        figures = dict(zip(FIGURES, [*image, *copy], strict=True))
        machine = machine_report(
            {
                "disk image's datastore": disk.image,
                "data disk": disk.mountpoint,
                "staging and restic repositories": root / "repos",
            }
        )
    print(report(mib, figures, time.monotonic() - started))
    print(machine, flush=True)
    return 0
