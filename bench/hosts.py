"""Cut time and write stall against the number of hosts: one cut over SSH to N testbed VMs.

One testbed (DESIGN.md §8) with as many hosts as the largest N; each host is a network
namespace with sshd whose backup key runs the guest agent, and holds one 32 MiB ext4 disk
(a loop-mounted image on the testbed's XFS datastore) declared ``snapshot = "image"``,
``freeze = true``. While the N hosts' cuts are measured, a writer process per disk
writes and fsyncs a small file in a loop, so each freeze has a journal to flush. For each
N (1, 4, 16 by default) the application of the first N hosts is backed up with the real
CLI, ``cleancut backup --json``, once as a warm-up and then ``--rounds`` times.

Figures, per N:

* **cut time**: from the ``hello`` phase starting to the ``thaw`` phase done, as the
  CLI's phase events arrive (the bench's monotonic clock): connecting to every host, the
  guests' start-up, clock estimation, prepare, the freeze (each guest snapshots inside it)
  and the thaw. Uploads and the commit come after it and are left out;
* **write stall**: the manifest's ``hosts[*].write_stall`` (first FIFREEZE call to the
  last thaw on that host's clock), pooled over all hosts and rounds;
* beside them, the freeze and thaw phases' seconds (what the holds cost the coordinator)
  and the quiet window every hold shared.

``--delay-ms D`` adds D ms each way to every host's link: with ``tc netem`` where the
kernel has it, otherwise through :mod:`bench.relay` (a delaying TCP relay on 127.0.0.1
per host; the application then connects to the relay and ``known_hosts`` lists the host
key under ``[127.0.0.1]:PORT``). The report says which.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.common import REPRODUCE, Series, machine_report, ms, require_root, say, table, workspace
from bench.hostbed import (
    DISK_MIB,
    VOLUME,
    app_config,
    build_testbed,
    endpoints,
    stop,
    write_private,
    writers,
)

COUNTS = (1, 4, 16)
ROUNDS = 5
GOAL_HOSTS = 16
GOAL_RATIO = 1.5
GOAL = f"write stall of {GOAL_HOSTS} hosts within {GOAL_RATIO}x that of 1 host"
#: exit codes of a committed backup: application level, or a weaker level (no hooks or
#: writers are declared here, so every cut is "filesystem" level: exit 3)
COMMITTED = (0, 3)
BACKUP_TIMEOUT = 300.0
#: what a reader runs to get the same figures
HOW = (
    "as root, from a clone: `.venv/bin/python -m bench.hosts [--hosts 1,4,16,32] "
    "[--rounds 5] [--delay-ms 50]` (or `python -m bench --only hosts`)"
)
PAUSE_BETWEEN_CUTS = 1.0
HEADERS = [
    "hosts", "cuts", "failed", "cut p50 ms", "x1",
    "stall p50 ms", "x1", "stall p99 ms", "x1", "freeze+thaw p50 ms", "quiet p50 ms",
]  # fmt: skip


@dataclass(frozen=True)
class Cut:
    """One committed backup's figures (seconds)."""

    cut_time: float
    hold: float
    stalls: tuple[float, ...]
    quiet: float | None
    whole: float
    level: str
    group_consistent: bool


@dataclass
class Sweep:
    """Every cut of one host count, and the errors of those that failed."""

    hosts: int
    cuts: list[Cut] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def series(self, what: str) -> Series:
        """``cut``, ``stall`` (pooled over hosts), ``hold`` or ``quiet`` as a Series."""
        if what == "stall":
            return Series(what, tuple(s for c in self.cuts for s in c.stalls))
        if what == "quiet":
            return Series(what, tuple(c.quiet for c in self.cuts if c.quiet is not None))
        return Series(what, tuple(c.cut_time if what == "cut" else c.hold for c in self.cuts))


def backup(config: Path, stderr_file: Path) -> Cut | str:
    """One ``cleancut backup --json``: its figures, or why it failed."""
    argv = [sys.executable, "-m", "cleancut", "backup", "--json", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    events: list[tuple[float, dict[str, Any]]] = []
    with stderr_file.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    timer = threading.Timer(BACKUP_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                events.append((time.monotonic(), json.loads(line)))
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # interrupted: the backup releases its hosts, then exits
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop(proc, 10)
    tail = " | ".join(stderr_file.read_text(errors="replace").strip().splitlines()[-3:])
    if code not in COMMITTED:
        return f"exit {code}: {tail or 'no message'}"
    try:
        return _figures(events)
    except (KeyError, TypeError, ValueError) as exc:
        return f"exit {code} but no usable result event ({exc!r}): {tail}"


def _figures(events: list[tuple[float, dict[str, Any]]]) -> Cut:
    """The cut's figures from its events: phase stamps and the result's manifest."""

    def stamp(phase: str, state: str) -> float:
        return next(t for t, e in events if (e.get("phase"), e.get("state")) == (phase, state))

    done = {e["phase"]: float(e["seconds"]) for _, e in events if e.get("state") == "done"}
    manifest = next(e["manifest"] for _, e in events if e.get("event") == "result")
    window = manifest.get("quiet_window")
    created = datetime.fromisoformat(manifest["created_at"])
    finished = datetime.fromisoformat(manifest["finished_at"])
    stalls = [h["write_stall"] for h in manifest["hosts"]]
    if any(s is None for s in stalls):
        raise ValueError(f"a host recorded no write stall: {stalls}")
    return Cut(
        cut_time=stamp("thaw", "done") - stamp("hello", "start"),
        hold=done["freeze"] + done["thaw"],
        stalls=tuple(float(s) for s in stalls),
        quiet=None if window is None else float(window[1]) - float(window[0]),
        whole=(finished - created).total_seconds(),
        level=str(manifest["level"]),
        group_consistent=bool(manifest["group_consistent"]),
    )


def plural(n: int) -> str:
    """``1 host``, ``4 hosts``."""
    return f"{n} host" + ("" if n == 1 else "s")


def measure(n: int, config: Path, rounds: int, mounts: Sequence[Path], ws: Path) -> Sweep:
    """A warm-up cut, then ``rounds`` counted cuts of the ``n``-host application."""
    sweep = Sweep(n)
    say(f"== {plural(n)}: {rounds} cuts after a warm-up ==")
    with writers(mounts[:n]):
        for index in range(-1, rounds):
            result = backup(config, ws / f"backup-{n}.err")
            label = "warm-up" if index < 0 else f"round {index + 1}/{rounds}"
            if isinstance(result, str):
                say(f"{plural(n)}, {label}: the cut failed: {result}")
                if index >= 0:
                    sweep.failed.append(result)
            else:
                say(
                    f"{plural(n)}, {label}: cut {ms(result.cut_time)} ms, write stall max "
                    f"{ms(max(result.stalls))} ms, whole backup {result.whole:.1f} s"
                )
                if index >= 0:
                    sweep.cuts.append(result)
            time.sleep(PAUSE_BETWEEN_CUTS)
    return sweep


def _ratio(value: Series, base: Series, q: int) -> str:
    if not value.values or not base.values or base.quantile(q) <= 0:
        return "-"
    return f"{value.quantile(q) / base.quantile(q):.2f}"


def _row(sweep: Sweep, base: Sweep) -> list[str]:
    row = [plural(sweep.hosts), str(len(sweep.cuts)), str(len(sweep.failed))]
    cut, stall = sweep.series("cut"), sweep.series("stall")
    hold, quiet = sweep.series("hold"), sweep.series("quiet")
    if not cut.values:
        return row + ["-"] * (len(HEADERS) - 3)
    b_cut, b_stall = base.series("cut"), base.series("stall")
    return [
        *row,
        ms(cut.p50), _ratio(cut, b_cut, 50),
        ms(stall.p50), _ratio(stall, b_stall, 50),
        ms(stall.p99), _ratio(stall, b_stall, 99),
        ms(hold.p50), ms(quiet.p50) if quiet.values else "-",
    ]  # fmt: skip


def goal_line(sweeps: dict[int, Sweep]) -> str:
    """Whether the goal was met, judged on the p50 write stall (p99 ratio told beside)."""
    one, many = sweeps.get(1), sweeps.get(GOAL_HOSTS)
    if one is None or many is None or not one.cuts or not many.cuts:
        return f"goal: {GOAL}: not measured (needs cuts of 1 and of {GOAL_HOSTS} hosts)"
    base, value = one.series("stall"), many.series("stall")
    p50, p99 = value.p50 / base.p50, value.p99 / base.p99
    verdict = "met" if p50 <= GOAL_RATIO else "not met"
    return f"goal: {GOAL}: {verdict} (p50 ratio {p50:.2f}; p99 ratio {p99:.2f})"


def round_trip_note(sweeps: dict[int, Sweep], delay_ms: int) -> list[str]:
    """With a delay: how the stall of the most hosts compares with that of the fewest
    (more than one), whose stall holds the same single round trip."""
    if not delay_ms:
        return []
    lines = [
        f"the delay adds {2 * delay_ms} ms to every round trip; one host alone thaws inside "
        "its freeze call (no round trip in its stall), with more hosts each stall holds one",
        "round trip (the freeze answer going out, the thaw request coming back)",
    ]
    several = [s for n, s in sweeps.items() if n > 1 and s.cuts]
    if len(several) > 1:
        low, high = several[0], several[-1]
        ratio = high.series("stall").p50 / low.series("stall").p50
        lines.append(
            f"write stall p50 of {plural(high.hosts)} against {plural(low.hosts)}: "
            f"{ratio:.2f}x (near 1: bounded by round trips, not by the number of hosts)"
        )
    return lines


def report(sweeps: dict[int, Sweep], rounds: int, delay: str, delay_ms: int, seconds: float) -> str:
    """The table, the goal line and what each figure means."""
    base = sweeps[min(sweeps)]
    cuts = [c for s in sweeps.values() for c in s.cuts]
    levels = ", ".join(sorted({c.level for c in cuts})) or "-"
    grouped = sum(c.group_consistent for c in cuts)
    lines = [
        f"cut time and write stall against the number of hosts, over SSH to testbed VMs: "
        f"{rounds} cuts per host count after one warm-up; the whole run took {seconds:.0f} s",
        f"added link delay: {delay}",
        "",
        table(HEADERS, [_row(s, base) for s in sweeps.values()]),
        f"x1: the ratio to {plural(base.hosts)}",
        goal_line(sweeps),
        *round_trip_note(sweeps, delay_ms),
        "",
        "cut time: the hello phase starting to the thaw phase done, as the CLI's --json phase",
        "events arrive (connect, guest start-up, clock estimation, prepare, freeze with the",
        "snapshots, thaw; uploads and the commit are left out); write stall: the manifest's",
        "hosts[*].write_stall (first FIFREEZE call to the last thaw, per host), pooled over",
        "all hosts and cuts; freeze+thaw: those two phases' seconds; quiet: the manifest's",
        "quiet window (the span every host's hold shared)",
        f"each host: one {DISK_MIB} MiB ext4 disk image on the XFS datastore, "
        'snapshot = "image", freeze = true,',
        "and a writer process fsyncing 4 KiB every 10 ms to it",
        f"levels: {levels}; group-consistent: {grouped} of {len(cuts)} cuts",
    ]
    if cuts:
        whole = Series("whole", tuple(c.whole for c in cuts))
        lines.append(f"whole backup incl. uploads and commit: p50 {whole.p50:.2f} s")
    for sweep in sweeps.values():
        for error in sorted(set(sweep.failed)):
            lines.append(f"{plural(sweep.hosts)}: failed {sweep.failed.count(error)}x: {error}")
    return "\n".join(lines)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: everything is torn down


def run(counts: Sequence[int] = COUNTS, rounds: int = ROUNDS, delay_ms: int = 0) -> int:
    """Bring the testbed up, measure every host count, tear it all down, print figures."""
    require_root("host-count")
    started = time.monotonic()
    names = [f"vm{i}" for i in range(1, max(counts) + 1)]
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with ExitStack() as stack:
            ws = workspace("hosts-")
            stack.callback(shutil.rmtree, ws, True)
            write_private(ws / "repository.pass", "correct horse battery staple\n")
            say(f"bringing up {len(names)} testbed hosts (workspace {ws})")
            bed = build_testbed(stack, names, ws)
            say(f"testbed up in {time.monotonic() - started:.1f} s at {bed.root}")
            delay, ends = endpoints(stack, bed, names, delay_ms, ws)
            mounts = [bed.root / name / VOLUME for name in names]
            sweeps = {
                n: measure(n, app_config(ws, bed, n, ends), rounds, mounts, ws) for n in counts
            }
            places = {
                "disk images' datastore": bed.datastore().path,
                "hosts' disks": mounts[0],
                "restic repository": ws,
            }
            machine = machine_report(places).replace(REPRODUCE, HOW)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report(sweeps, rounds, delay, delay_ms, time.monotonic() - started))
    print(machine, flush=True)
    return 0


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give host counts like 1,4,16") from None
    if not counts or counts[0] < 1 or counts[-1] > 64:
        raise argparse.ArgumentTypeError(f"{text!r}: host counts must be 1..64")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's options (shared with ``python -m bench``)."""
    parser.add_argument("--hosts", type=_counts, help="host counts, e.g. 1,4,16,32 (1,4,16)")
    parser.add_argument("--rounds", type=int, help=f"cuts per host count ({ROUNDS})")
    parser.add_argument("--delay-ms", type=int, default=0, help="added delay each way (0)")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.hosts [--hosts 1,4,16] [--rounds 5] [--delay-ms 50]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (args.rounds is not None and args.rounds < 1) or args.delay_ms < 0:
        parser.error("--rounds must be at least 1 and --delay-ms at least 0")
    try:
        return run(args.hosts or COUNTS, args.rounds or ROUNDS, args.delay_ms)
    except KeyboardInterrupt:
        say("interrupted: the testbed, the writers and the relays were taken down")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
