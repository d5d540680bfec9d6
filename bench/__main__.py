"""``python -m bench [--quick] [--only stall|mover]``: run cleancut's benchmarks, print figures.

Both need root (loop devices, mounts, FIFREEZE) and restic. They measure and print; they
assert nothing about speed. ``--quick`` runs few cuts on small data, for a smoke test.
"""

from __future__ import annotations

import argparse
import time

from bench import mover, stall
from bench.common import require_root, say

FULL_CUTS = 50
QUICK_CUTS = 2
FULL_MIB = 1024
QUICK_MIB = 64


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CUTS} cuts without warm-up and {QUICK_MIB} MiB "
        f"(instead of {FULL_CUTS} cuts and {FULL_MIB} MiB)",
    )
    parser.add_argument("--only", choices=["stall", "mover"], help="run one benchmark only")
    parser.add_argument("--cuts", type=int, help="cuts per method for the stall benchmark")
    parser.add_argument("--mib", type=int, help="MiB of data for the mover benchmark")
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
    status = 0
    for name in ("stall", "mover"):
        if args.only not in (None, name):
            continue
        started = time.monotonic()
        say(f"== {name} benchmark ==")
        if name == "stall":
            status |= stall.run(cuts, warmup=not args.quick)
        else:
            status |= mover.run(mib)
        say(f"== {name} benchmark took {time.monotonic() - started:.0f} s ==")
        print(flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
