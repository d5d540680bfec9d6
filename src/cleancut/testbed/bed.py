"""A testbed of N "VM" hosts: network namespaces with sshd, and disks on a datastore.

:class:`Testbed` is what tests, the demo and the benchmarks use; ``python -m
cleancut.testbed`` (``scripts/testbed``) is the same for a person. Every testbed takes a
free *block* (``198.18.<block>.0/24``, namespaces ``cc<block>-<host>``), so two of them
(a test run and a demo) never collide.

Cleanup is the point: everything is recorded in the testbed's state file before it is
made, so :func:`cleancut.testbed.state.teardown` removes it all even after the creating
process was SIGKILLed (see ``state.py``). Folder layout::

    <root>/state.json, id_ed25519(.pub), known_hosts
    <root>/sshd/<host>/      host key, sshd_config, authorized_keys, guest.toml, log, pid
    <root>/store/            the datastore (image and mount), when one is opened
    <root>/<host>/<volume>   each disk's mount point
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from cleancut.demo.disks import Datastore, Disk, FsType
from cleancut.testbed import netns, sshd
from cleancut.testbed.netns import Link, TestbedError
from cleancut.testbed.state import POINTER, STATE, State, claim_block, teardown

RESERVED = {"sshd", "store"}
_HOST_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

#: Every testbed this process brought up (for test finalisers).
_CREATED: list[Testbed] = []


def created_here() -> list[Testbed]:
    """The testbeds this process brought up and has not taken down yet."""
    return list(_CREATED)


class Host:
    """One testbed host: its namespace, address, sshd files and guest config."""

    def __init__(self, name: str, index: int, link: Link, folder: Path) -> None:
        self.name = name
        self.index = index
        self.link = link
        self.folder = folder
        self.host_key = folder / "ssh_host_ed25519_key"
        self.config = folder / "sshd_config"
        self.authorized_keys = folder / "authorized_keys"
        self.guest_config = folder / "guest.toml"
        self.log = folder / "sshd.log"
        self.pid_file = folder / "sshd.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.link.address

    @property
    def namespace(self) -> str:
        return self.link.namespace

    @property
    def connect_url(self) -> str:
        return f"ssh://root@{self.address}:{sshd.SSH_PORT}"

    def cut(self) -> None:
        """Cut this host's network: its side of the link goes down."""
        netns.set_link(self.link, up=False)

    def mend(self) -> None:
        """Bring the link back up (addresses and routes return with it)."""
        netns.set_link(self.link, up=True)

    def run(
        self, argv: Sequence[str], timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host's network namespace; output captured as text."""
        return subprocess.run(
            netns.enter(self.namespace, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


@dataclass(frozen=True)
class DelayResult:
    """Whether a link delay was applied, and why not; true when it was."""

    applied: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.applied


class Testbed:
    """N hosts as network namespaces with sshd; a context manager (``down`` on exit).

    ``root`` defaults to ``/run/cleancut-testbed/<block>``; a given root must be
    root-owned all the way up (sshd's StrictModes checks the ``authorized_keys`` path).
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, root: Path | None = None, hosts: Sequence[str] = ("h1", "h2")) -> None:
        _check_names(hosts)
        self._root = root.absolute() if root is not None else None
        self._names = list(hosts)
        self.state: State | None = None
        self.hosts: dict[str, Host] = {}
        self._store: Datastore | None = None

    @property
    def root(self) -> Path:
        return Path(self._require().root)

    @property
    def block(self) -> int:
        return self._require().block

    @property
    def identity_file(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def up(self) -> Testbed:
        """Create the namespaces, keys and configs, start every sshd and wait for them."""
        if self.state is not None:
            return self
        if self._root is not None:
            _check_root(self._root)
        block, claim = claim_block()
        root = self._root or claim
        self.state = State(block, str(root), str(claim))
        _CREATED.append(self)
        try:
            if root != claim:
                root.mkdir(mode=0o755, parents=True, exist_ok=True)
                (claim / POINTER).write_text(str(root), encoding="utf-8")
            root.chmod(0o755)
            self._make_hosts(block, root)
            self._start_all()
        except BaseException:
            self.down()
            raise
        return self

    def _make_hosts(self, block: int, root: Path) -> None:
        state = self._require()
        for index, name in enumerate(self._names, start=1):
            host = Host(name, index, netns.make_link(block, index, name), root / "sshd" / name)
            self.hosts[name] = host
            state.hosts[name] = {"index": index, **asdict(host.link)}
            state.namespaces.append(host.namespace)
            state.veths.append(host.link.veth)
        state.save()
        netns.create([host.link for host in self.hosts.values()])
        for host in self.hosts.values():
            host.folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        keys = {self.identity_file: f"cleancut-testbed-{block}"}
        keys.update({h.host_key: f"{h.name}@cleancut-testbed-{block}" for h in self.hosts.values()})
        sshd.keygen(keys)
        known = [sshd.known_hosts_line(h.address, h.host_key) for h in self.hosts.values()]
        sshd.write_file(self.known_hosts, "\n".join(known) + "\n", 0o644)
        for host in self.hosts.values():
            sshd.write_file(host.guest_config, "", 0o600)
            self.set_guest_config(host.name, host.guest_config)
            config = sshd.sshd_config(
                host.address, host.host_key, host.pid_file, host.authorized_keys
            )
            sshd.write_file(host.config, config, 0o600)

    def _start_all(self) -> None:
        state = self._require()
        pending = []
        for host in self.hosts.values():
            host.proc = sshd.start(host.namespace, host.config, host.log)
            start = sshd.start_time(host.proc.pid)
            state.sshd[host.name] = [host.proc.pid, start or 0]
            state.save()
            pending.append(sshd.Pending(host.name, host.address, host.proc, host.log))
        sshd.wait_listening(pending)

    def set_guest_config(self, host: str, path: Path) -> None:
        """Make ``host``'s backup key run the guest agent with the guest config ``path``."""
        target = self._host(host)
        line = sshd.authorized_line(path, sshd.public_key(self.identity_file))
        sshd.write_file(target.authorized_keys, line + "\n", 0o600)
        target.guest_config = path
        self._require().hosts[host]["guest_config"] = str(path)

    def datastore(self, size_mib: int = 512) -> Datastore:
        """The testbed's datastore (XFS with reflink, under ``<root>/store``); opened once."""
        if self._store is None:
            state = self._require()
            store = Datastore(self.root / "store", size_mib, remove_images=True)
            state.mounts.append({"path": str(store.path), "image": str(store.image)})
            state.save()
            self._store = store
            store.open()
            self._record_loop(store.device)
        return self._store

    def add_disk(self, host: str, volume: str, size_mib: int = 64, fstype: FsType = "ext4") -> Disk:
        """A ``fstype`` disk on the datastore, mounted at ``<root>/<host>/<volume>``."""
        self._host(host)
        _check_names([volume])
        store = self.datastore()
        name = f"{host}-{volume}"
        mountpoint = self.root / host / volume
        state = self._require()
        image = store.path / "disks" / f"{name}.img"
        state.mounts.append({"path": str(mountpoint), "image": str(image)})
        state.save()
        disk = store.add_disk(name, mountpoint, size_mib, fstype)
        self._record_loop(disk.device)
        return disk

    def _record_loop(self, device: str | None) -> None:
        if device is not None:
            self._require().loops.append(device)
            self._require().save()

    def set_delay(self, host: str, ms: int) -> DelayResult:
        """Delay both directions of ``host``'s link by ``ms`` (tc netem); 0 removes it."""
        applied, reason = netns.set_delay(self._host(host).link, ms)
        return DelayResult(applied, reason)

    def app_config(self, host: str) -> str:
        """The ``[hosts.NAME]`` table of an application config that reaches ``host``."""
        target = self._host(host)
        return (
            f"[hosts.{target.name}]\n"
            f'connect = "{target.connect_url}"\n'
            f'identity_file = "{self.identity_file}"\n'
            f'known_hosts = "{self.known_hosts}"\n'
        )

    def ssh_argv(self, host: str, *options: str, known_hosts: Path | None = None) -> list[str]:
        """``ssh`` to ``host`` as the testbed's backup key: host key checked, no prompts."""
        target = self._host(host)
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(self.identity_file),
            *options,
            f"root@{target.address}",
        ]

    def down(self) -> list[str]:
        """Remove everything this testbed made. Idempotent; never raises.

        Returns what could not be removed (empty when all went).
        """
        state = self.state
        if state is None:
            return []
        if self._store is not None:
            self._store.close()
            self._store = None
        problems = teardown(Path(state.root), state)
        for host in self.hosts.values():
            if host.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.proc.wait(timeout=5)  # reap: it was stopped by teardown
        # only now: a down interrupted half-way is finished by the session finaliser
        self.state = None
        with contextlib.suppress(ValueError):
            _CREATED.remove(self)
        return problems

    def _host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise TestbedError(f"no host {name!r} in this testbed: {sorted(self.hosts)}") from None

    def _require(self) -> State:
        if self.state is None:
            raise TestbedError("the testbed is not up: call up() (or use `with Testbed(...)`)")
        return self.state

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()


def _check_names(names: Iterable[str]) -> None:
    names = list(names)
    if not names or len(names) > netns.MAX_HOSTS or len(set(names)) != len(names):
        raise TestbedError(f"hosts {names}: 1..{netns.MAX_HOSTS} distinct names are needed")
    for name in names:
        if not _HOST_RE.match(name) or name in RESERVED:
            raise TestbedError(
                f"name {name!r}: use lower-case letters, digits and '-' (at most 32, "
                f"starting with a letter), not {sorted(RESERVED)}"
            )


def _check_root(root: Path) -> None:
    """Refuse a root that sshd's StrictModes would refuse, or that already holds a testbed."""
    if (root / STATE).exists():
        raise TestbedError(f"{root}: a testbed is already there; run `scripts/testbed down`")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise TestbedError(f"testbed root {root}: exists and is not empty; `down` deletes it")
    path = root.absolute()
    for folder in [path, *path.parents]:
        if not folder.exists():
            continue
        info = folder.stat()
        if info.st_uid != 0 or info.st_mode & 0o022:
            raise TestbedError(
                f"testbed root {root}: {folder} is not root-owned or is group/world-writable; "
                "sshd (StrictModes) would refuse authorized_keys below it: use a folder "
                "under /run or /var/lib"
            )
