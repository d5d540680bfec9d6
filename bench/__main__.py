"""``python -m bench [--quick] [--only stall|mover|writers|hosts|consistency|forget]``: run
cleancut's benchmarks.

They need root (loop devices, mounts, FIFREEZE) and restic. They measure and print; they
assert nothing about speed. ``--quick`` runs few cuts on small data, for a smoke test.
By default the stall, mover and database-writer benchmarks run. The host-count benchmark
(``hosts``: a testbed of up to 16 SSH hosts) and the cross-database consistency table
(``consistency``: three VMs with PostgreSQL, MariaDB and a share, 20 backups per method)
and the forget benchmark (``forget``: 200 real recovery points of a three-host application,
then ``cleancut forget`` against one ``restic forget`` per snapshot)
take many minutes and run only when asked for with ``--only`` (or ``python -m
bench.hosts`` / ``python -m bench.consistency`` / ``python -m bench.forget``).
"""

from __future__ import annotations

import argparse
import time

from bench import consistency, forget, hosts, mover, stall, writers
from bench.common import require_root, say

FULL_CUTS = 50
QUICK_CUTS = 2
FULL_MIB = 1024
QUICK_MIB = 64
QUICK_HOSTS = (1, 2)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CUTS} cuts without warm-up and {QUICK_MIB} MiB "
        f"(instead of {FULL_CUTS} cuts and {FULL_MIB} MiB)",
    )
    parser.add_argument(
        "--only",
        choices=["stall", "mover", "writers", "hosts", "consistency", "forget"],
        help="run one benchmark only",
    )
    parser.add_argument("--cuts", type=int, help="cuts per method for the stall benchmark")
    parser.add_argument("--mib", type=int, help="MiB of data for the mover benchmark")
    hosts.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; exit status 2 when not root."""
    args = _parse(argv)
    require_root("cleancut")
    cuts = args.cuts or (QUICK_CUTS if args.quick else FULL_CUTS)
    mib = args.mib or (QUICK_MIB if args.quick else FULL_MIB)
    if cuts < 1 or mib < 1:
        say("--cuts and --mib must be at least 1")
        return 2
    if args.only == "hosts":
        return _hosts(args)
    if args.only == "consistency":
        backups = QUICK_CUTS if args.quick else consistency.BACKUPS
        return consistency.main(["--backups", str(backups)])
    if args.only == "forget":
        points = forget.QUICK_POINTS if args.quick else forget.POINTS
        return forget.main(["--points", str(points)])
    status = 0
    for name in ("stall", "mover", "writers"):
        if args.only not in (None, name):
            continue
        started = time.monotonic()
        say(f"== {name} benchmark ==")
        if name == "stall":
            status |= stall.run(cuts, warmup=not args.quick)
        elif name == "writers":
            status |= writers.main(["--quick"] if args.quick else [])
        else:
            status |= mover.run(mib)
        say(f"== {name} benchmark took {time.monotonic() - started:.0f} s ==")
        print(flush=True)
    return status


def _hosts(args: argparse.Namespace) -> int:
    """The host-count benchmark; ``--quick``: 1 and 2 hosts, two rounds."""
    counts = args.hosts or (QUICK_HOSTS if args.quick else hosts.COUNTS)
    rounds = args.rounds or (QUICK_CUTS if args.quick else hosts.ROUNDS)
    if rounds < 1 or args.delay_ms < 0:
        say("--rounds must be at least 1 and --delay-ms at least 0")
        return 2
    started = time.monotonic()
    say("== hosts benchmark ==")
    status = hosts.run(counts, rounds, args.delay_ms)
    say(f"== hosts benchmark took {time.monotonic() - started:.0f} s ==")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
