"""Applications of several hosts, reached ``local``ly or over ``ssh`` (one suite, both ways).

A :class:`Cluster` writes each host's guest config and the application config naming the
hosts. Over ``local`` the guests are child processes of the coordinator; over ``ssh`` each
host is a testbed VM (a network namespace with sshd) whose backup key runs the guest with
that guest config. The disks are loop-mounted images on one XFS datastore either way (the
mounts are shared by every namespace), so the same scenario runs over both transports.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cleancut.demo.disks import Datastore, Disk
from cleancut.testbed import Testbed
from tests.integration.cutlib import App, write_private

TRANSPORTS = ("local", "ssh")


@dataclass
class Cluster:
    """Hosts of one application over one transport."""

    transport: str
    root: Path
    datastore: Datastore
    bed: Testbed | None = None
    disks: dict[str, Disk] = field(default_factory=dict)

    def disk(self, host: str, volume: str, fstype: str = "ext4", size_mib: int = 64) -> Disk:
        """A disk image on the datastore, mounted where ``host`` has ``volume``."""
        name = f"{host}-{volume}"
        disk = self.datastore.add_disk(
            name,
            self.datastore.root / host / volume,
            size_mib,
            fstype,  # type: ignore[arg-type]
        )
        self.disks[name] = disk
        return disk

    def app(
        self,
        guests: dict[str, str],
        *,
        on_failure: str = "degrade",
        freeze_timeout: str = "10s",
        extra: str = "",
    ) -> App:
        """Write the guest configs and the application config; the hosts in ``guests``."""
        lines = [
            'name = "multi"',
            f'freeze_timeout = "{freeze_timeout}"',
            f'on_failure = "{on_failure}"',
            f'catalog = "{self.root / "catalog.sqlite"}"',
            extra,
            "[repository]",
            f'url = "{self.root / "repository"}"',
            'password_file = "repository.pass"',
            "",
        ]
        for host, text in guests.items():
            guest = write_private(self.root / f"guest-{host}.toml", text)
            if self.bed is None:
                lines += [f"[hosts.{host}]", f'guest_config = "{guest}"', ""]
            else:
                self.bed.set_guest_config(host, guest)
                lines += [
                    self.bed.app_config(host),
                    'connect_timeout = "3s"',
                    'keepalive_interval = "1s"',
                    "keepalive_count = 3",
                    "",
                ]
        write_private(self.root / "repository.pass", "correct horse battery staple\n")
        return App(self.root, write_private(self.root / "app.toml", "\n".join(lines)))

    def cut(self, host: str) -> None:
        """Take ``host``'s network link down (ssh only)."""
        assert self.bed is not None
        self.bed.hosts[host].cut()

    def mend(self, host: str) -> None:
        assert self.bed is not None
        self.bed.hosts[host].mend()


def external_volume(name: str, path: Path) -> str:
    return f'[volumes.{name}]\npath = "{path}"\nsnapshot = "external"\n'


def disk_entry(name: str, image: Path, backs: str) -> str:
    return f'[disks.{name}]\nimage = "{image}"\nbacks = "{backs}"\n'


def fsck_clean(image: Path, fstype: str) -> subprocess.CompletedProcess[str]:
    argv = (
        ["xfs_repair", "-n", "-f", str(image)] if fstype == "xfs" else ["e2fsck", "-fn", str(image)]
    )
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def guest_pids(config: Path) -> list[int]:
    """The guest agents running with guest config ``config`` (their own pids, not their
    children's)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"guest" in argv and str(config).encode() in argv and b"cleancut" in argv:
            pids.append(int(entry.name))
    return pids


def restic_pids(repository: Path) -> list[int]:
    """The restic processes uploading a volume's snapshot into ``repository``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "restic":
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        upload = b"resource=" in (entry / "cmdline").read_bytes()
        if upload and f"RESTIC_REPOSITORY={repository}".encode() in environ:
            pids.append(int(entry.name))
    return pids
