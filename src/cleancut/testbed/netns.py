"""The testbed's network: one namespace and one veth pair per "VM" host (DESIGN.md §8 Hosts).

Every address comes from 198.18.0.0/15, the range reserved for test networks, and the
namespaces get no default route: only the root namespace and each host's own /30 are
reachable, so a test can never send traffic anywhere else. Host ``i`` (1-based) of
testbed block ``b`` gets the /30 ``198.18.b.(4(i-1))``: the root side holds ``.+1``, the
namespace side (``eth0``) ``.+2``.

Processes are put into a namespace with ``nsenter --net`` rather than ``ip netns exec``:
the latter also gives the process a private copy of the mount table (``/`` is private on
many machines), so a disk mounted after the host's sshd started would stay invisible to
its guest agent, and an unmounted one would live on in that copy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cleancut.errors import CleancutError

TEST_NETWORK = ipaddress.ip_network("198.18.0.0/15")
MAX_HOSTS = 64
BLOCKS = range(256)
INNER_DEV = "eth0"
NETNS_DIR = Path("/run/netns")
IP_TIMEOUT = 30.0

_ADDRESS_RE = re.compile(r"\binet 198\.18\.(\d+)\.\d+/")
_NAMESPACE_RE = re.compile(r"^cc(\d+)-")


class TestbedError(CleancutError):
    """The testbed could not be set up."""

    __test__ = False  # not a pytest test class, despite its name


@dataclass(frozen=True)
class Link:
    """One host's network: its namespace, the root-side veth and both /30 addresses."""

    namespace: str
    veth: str
    gateway: str  # root side
    address: str  # namespace side, where the host's sshd listens


def make_link(block: int, index: int, host: str) -> Link:
    """The names and addresses of host number ``index`` (1-based) in testbed ``block``."""
    if block not in BLOCKS:
        raise TestbedError(f"testbed block {block}: must be 0..255 (198.18.<block>.0/24)")
    if not 1 <= index <= MAX_HOSTS:
        raise TestbedError(f"host number {index}: a testbed has 1..{MAX_HOSTS} hosts")
    base = 4 * (index - 1)
    gateway, address = f"198.18.{block}.{base + 1}", f"198.18.{block}.{base + 2}"
    for ip in (gateway, address):  # the one rule this module must never break
        if ipaddress.ip_address(ip) not in TEST_NETWORK:
            raise TestbedError(f"{ip} is outside {TEST_NETWORK}")
    return Link(f"cc{block}-{host}", f"cc{block}h{index}", gateway, address)


def used_blocks() -> set[int]:
    """Blocks in use on this machine: a 198.18.B.x address exists or a ``ccB-`` namespace."""
    used = {int(m) for m in _ADDRESS_RE.findall(_ip(["-o", "-4", "addr", "show"]))}
    for name in list_namespaces():
        match = _NAMESPACE_RE.match(name)
        if match:
            used.add(int(match.group(1)))
    return used


def list_namespaces() -> list[str]:
    """The names of the network namespaces ``ip netns`` knows."""
    return [line.split()[0] for line in _ip(["netns", "list"]).splitlines() if line.strip()]


def list_links() -> list[str]:
    """The names of the root namespace's network interfaces."""
    names = []
    for line in _ip(["-o", "link", "show"]).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            names.append(parts[1].strip().split("@")[0])
    return names


def create(links: Sequence[Link]) -> None:
    """Create every namespace and veth pair, address both ends and bring them (and lo) up.

    One ``ip -batch`` for the root side, then one per namespace, in parallel: 32 hosts
    take a few hundred milliseconds instead of a few hundred ``ip`` processes in a row.
    """
    root_side = []
    for link in links:
        root_side += [
            f"netns add {link.namespace}",
            f"link add {link.veth} type veth peer name {INNER_DEV} netns {link.namespace}",
            f"addr add {link.gateway}/30 dev {link.veth}",
            f"link set {link.veth} up",
        ]
    _batch(root_side)

    def inside(link: Link) -> None:
        _batch(
            [
                f"addr add {link.address}/30 dev {INNER_DEV}",
                f"link set {INNER_DEV} up",
                "link set lo up",
            ],
            namespace=link.namespace,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(inside, links))


def remove(veths: Sequence[str], namespaces: Sequence[str]) -> list[str]:
    """Delete the veths (both ends go) and the namespaces that still exist. Never raises.

    Returns what could not be removed, for the caller's report.
    """
    try:
        present_links, present_ns = set(list_links()), set(list_namespaces())
    except TestbedError as exc:
        return [str(exc)]
    lines = [f"link del {veth}" for veth in veths if veth in present_links]
    lines += [f"netns del {ns}" for ns in namespaces if ns in present_ns]
    if lines:
        with contextlib.suppress(TestbedError):  # reported below from what is left
            _batch(lines, force=True)
    try:
        left = [v for v in veths if v in set(list_links())]
        left += [n for n in namespaces if n in set(list_namespaces())]
    except TestbedError as exc:
        return [str(exc)]
    return [f"could not delete {name}" for name in left]


def set_link(link: Link, up: bool) -> None:
    """Take the namespace side of a host's link down (a cut network) or up again.

    Bringing it up also forgets both ends' failed neighbour (ARP) entries: connections
    tried while it was down leave one, and the kernel would answer "No route to host"
    for seconds after the link is back.
    """
    _ip(["-n", link.namespace, "link", "set", INNER_DEV, "up" if up else "down"])
    if up:
        _ip(["neigh", "flush", "dev", link.veth])
        _ip(["-n", link.namespace, "neigh", "flush", "dev", INNER_DEV])


def enter(namespace: str, argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped to run in ``namespace``'s network (the mount table stays shared)."""
    return ["nsenter", f"--net={NETNS_DIR / namespace}", "--", *argv]


def pids_in(namespace: str) -> list[int]:
    """Every process in ``namespace`` (``ip netns pids``); empty when it is gone."""
    if not (NETNS_DIR / namespace).exists():
        return []
    try:
        return [int(p) for p in _ip(["netns", "pids", namespace]).split()]
    except TestbedError:
        return []


def set_delay(link: Link, ms: int) -> tuple[bool, str]:
    """Add ``ms`` of delay to both ends of ``link`` with ``tc netem`` (0 removes it).

    Returns ``(done, reason)``: kernels without the netem qdisc say "Specified qdisc
    kind is unknown", and that is returned rather than raised, so a benchmark can say
    why it measured without delay.
    """
    verb = ["replace"] if ms else ["del"]
    netem = ["netem", "delay", f"{ms}ms"] if ms else []
    ends = [
        ["tc", "qdisc", *verb, "dev", link.veth, "root", *netem],
        ["tc", "-n", link.namespace, "qdisc", *verb, "dev", INNER_DEV, "root", *netem],
    ]
    for argv in ends:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"{argv[0]}: {exc}"
        if done.returncode != 0 and ms:  # deleting a qdisc that is not there is fine
            return False, f"{' '.join(argv)}: {done.stderr.strip()}"
    return True, ""


def _ip(args: list[str]) -> str:
    return _run(["ip", *args])


def _batch(lines: list[str], *, namespace: str | None = None, force: bool = False) -> None:
    argv = ["ip", *(["-n", namespace] if namespace else []), *(["-force"] if force else [])]
    _run([*argv, "-batch", "-"], stdin="\n".join(lines) + "\n")


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise TestbedError(f"{argv[0]} not found: install iproute2 (scripts/setup.sh)") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{' '.join(argv)} did not finish within {IP_TIMEOUT} s") from exc
    if done.returncode != 0:
        if os.geteuid() != 0:
            raise TestbedError(f"{' '.join(argv)}: the testbed needs root (namespaces, veths)")
        raise TestbedError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout
