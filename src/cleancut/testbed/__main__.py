"""``python -m cleancut.testbed`` (``scripts/testbed``): the testbed for a person.

``up N`` starts N hosts and exits, leaving them running; ``down`` removes them (all
testbeds under /run/cleancut-testbed, or the one in ``--root``); ``status`` lists them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from cleancut.errors import CleancutError
from cleancut.testbed.bed import Testbed
from cleancut.testbed.sshd import start_time
from cleancut.testbed.state import BASE, list_roots, read_state, teardown, teardown_all


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CleancutError as exc:
        print(f"testbed: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description=(
            "A testbed of N 'VM' hosts: network namespaces with sshd, addresses from "
            "198.18.0.0/15 only. Needs root."
        ),
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="start N hosts (h1..hN) and exit, leaving them running",
        description=(
            "Create N network namespaces h1..hN, each with a veth pair and its own sshd "
            "whose only authorised key (the printed identity file) runs the guest agent "
            "with that host's guest.toml. Prints each host's address, the identity file, "
            "known_hosts and an example [hosts.h1] table for an application config."
        ),
    )
    up.add_argument("count", type=int, metavar="N", help="how many hosts (1..64)")
    up.add_argument("--root", type=Path, help=f"the testbed folder (default {BASE}/<block>)")
    up.add_argument(
        "--foreground",
        action="store_true",
        help="stay in the foreground and take the testbed down on Ctrl-C or SIGTERM",
    )
    up.set_defaults(run=_up)
    down = commands.add_parser(
        "down",
        help="remove testbeds (all of them unless --root)",
        description=(
            "Stop the hosts' sshd (and anything still running in their namespaces), "
            "unmount their disks, delete namespaces, veths and the folder. Works from "
            "the state file alone, also after the process that made it was killed."
        ),
    )
    down.add_argument("--root", type=Path, help=f"only this testbed (default: all under {BASE})")
    down.set_defaults(run=_down)
    status = commands.add_parser(
        "status",
        help="list the testbeds and their hosts",
        description="List each testbed: its folder, block and hosts, and whether sshd runs.",
    )
    status.add_argument("--root", type=Path, help="only this testbed")
    status.set_defaults(run=_status)
    return parser


def _up(args: argparse.Namespace) -> int:
    bed = Testbed(args.root, [f"h{i}" for i in range(1, args.count + 1)]).up()
    print(f"testbed {bed.root} (block {bed.block}): {len(bed.hosts)} hosts")
    for host in bed.hosts.values():
        print(f"  {host.name:<6} {host.address:<16} namespace {host.namespace}")
    print(f"identity file: {bed.identity_file}")
    print(f"known_hosts:   {bed.known_hosts}")
    print("guest configs: " + str(bed.root / "sshd" / "<host>" / "guest.toml") + " (empty)")
    print("\nin an application config:\n")
    print(bed.app_config(next(iter(bed.hosts))))
    print(f"remove it with: scripts/testbed down --root {bed.root}", flush=True)
    if args.foreground:
        _wait_for_signal()
        problems = bed.down()
        _print_problems(problems)
        return 1 if problems else 0
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _down(args: argparse.Namespace) -> int:
    problems = teardown(args.root.absolute()) if args.root else teardown_all()
    _print_problems(problems)
    return 1 if problems else 0


def _status(args: argparse.Namespace) -> int:
    roots = [args.root.absolute()] if args.root else list_roots()
    if not roots:
        print("no testbed")
    for root in roots:
        state = read_state(root)
        if state is None:
            print(f"{root}: no state (half made or half removed: run down)")
            continue
        print(f"{root} (block {state.block})")
        for name, host in state.hosts.items():
            pid, start = state.sshd.get(name, [0, 0])
            running = bool(pid) and start_time(pid) == start
            sshd = f"sshd {pid}" if running else "sshd not running"
            print(f"  {name:<6} {host['address']:<16} {sshd}")
    return 0


def _print_problems(problems: list[str]) -> None:
    for problem in problems:
        print(f"testbed: {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
