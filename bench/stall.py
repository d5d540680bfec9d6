"""Write stall of a cut under the demo shop's load: cleancut against a hand-made cut.

The demo's workspace is built (three busy ext4 disk images on an XFS datastore) and the
shop's load generator runs throughout. Four methods take turns, round after round (the
order rotating each round), so they all meet the same load:

* cleancut with the shop's hooks and SQLite writers (the demo's "hooks" config);
* cleancut without application hooks (the demo's "plain" config);
* a hand-made cut of the same three disks: FIFREEZE each one after another,
  ``cp --reflink=always`` each disk image, FITHAW each;
* the same hand-made cut with the three freezes, the three copies and the three thaws
  each in parallel.

Like is compared with like. The cut without hooks does what the hand-made cut does (freeze
the same disks, clone them, thaw), so its write stall is set against the hand-made one's.
The cut with hooks does more: its pre-script pauses the shop before anything is frozen and
its post-script resumes it after the thaw, so the shop's users wait for the application's
**pause** (first pre-script start to last post-script end), not only for the write stall.
That cut's pause is reported beside its write stall, and neither is set against the
hand-made cut, which pauses no application.

Stalls are measured as the time writers wait: cleancut's is the manifest's per-host
``write_stall`` (from the first hold — a SQLite writer's lock or the first FIFREEZE call —
to the last release, on the guest's monotonic clock); the hand-made stall runs from the
first FIFREEZE call to the last FITHAW returning. cleancut's pause is the manifest's
per-host ``pause``. Each cleancut cut also uploads its images to the demo's restic
repository; that is part of the cut's wall time, not of its stall.

The shop writes a receipt file per order, ~150 a second, and a 64 MiB ext4 disk has 16384
inodes: between rounds the benchmark deletes the oldest receipts (outside every measured
window) so the receipts disk never runs out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Series, figures, machine_report, ms, require_root, say, table
from cleancut.config.load import load_app
from cleancut.coordinator import Coordinator
from cleancut.coordinator.repository import repository_access
from cleancut.demo import workspace
from cleancut.demo.shop import RESOURCES, LoadGenerator, receipt_name
from cleancut.errors import CleancutError, Interrupted
from cleancut.mover.restic import ResticMover
from cleancut.providers.ficlone import filesystem_of
from cleancut.system.ioctls import FIFREEZE, FITHAW
from cleancut.system.mounts import loop_backing_file

#: Load written between the settling freeze and each measured cut (see HandCut.settle).
SETTLE_SECONDS = 1.0

HOOKS = "cleancut (hooks)"
PLAIN = "cleancut, no application hook"
HAND_SEQ = "hand-made cut, one after another"
HAND_PAR = "hand-made cut, in parallel"
#: The rows of the like-with-like stall table, in order (the smoke test checks each one):
#: the cut without hooks against the hand-made cuts of the same disks under the same load.
METHODS = (PLAIN, HAND_SEQ, HAND_PAR)
#: The hooked cut (HOOKS) runs in the same rounds but gets its own table, stall beside pause.
HEADERS = ["method", "n", "failed", "p50 ms", "p99 ms", "mean ms"]

_CP_TIMEOUT = 60.0


@dataclass(frozen=True)
class ShopDisk:
    """One of the shop's disks: where it is mounted and the image file behind it."""

    name: str
    mount_point: Path
    image: Path


def shop_disks(ws: workspace.Workspace) -> list[ShopDisk]:
    """The three disks of the demo workspace, found from their loop devices."""
    disks = []
    for name in RESOURCES:
        mount = filesystem_of(ws.root / "vm" / "srv" / name)
        image = loop_backing_file(mount.source, mount.major_minor)
        if image is None or mount.mount_point == Path("/"):
            raise RuntimeError(f"{mount.mount_point} is not a loop-mounted disk image")
        disks.append(ShopDisk(name, mount.mount_point, image))
    return disks


def _ioctl_all(fds: list[int], request: int, parallel: bool) -> list[tuple[float, OSError | None]]:
    """``ioctl(fd, request)`` on every fd; each one's monotonic return time and error."""
    results: list[tuple[float, OSError | None]] = [(0.0, None)] * len(fds)

    def one(index: int) -> None:
        error: OSError | None = None
        try:
            fcntl.ioctl(fds[index], request, 0)
        except OSError as exc:
            error = exc
        results[index] = (time.monotonic(), error)

    if not parallel:
        for index in range(len(fds)):
            one(index)
        return results
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(fds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _clone_all(pairs: list[tuple[Path, Path]], parallel: bool) -> None:
    """``cp --reflink=always`` each (image, clone) pair, one after another or all at once."""
    argvs = [["cp", "--reflink=always", str(src), str(dst)] for src, dst in pairs]
    if not parallel:
        for argv in argvs:
            subprocess.run(argv, check=True, capture_output=True, timeout=_CP_TIMEOUT)
        return
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in argvs:
            procs.append(subprocess.Popen(argv, stderr=subprocess.PIPE))
        for proc, argv in zip(procs, argvs, strict=True):
            _, stderr = proc.communicate(timeout=_CP_TIMEOUT)
            if proc.returncode != 0:
                raise subprocess.CalledProcessError(proc.returncode, argv, stderr=stderr)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class Measured:
    """One cut: its write stall, and what else the method reports."""

    stall: float
    #: hand-made: from the last FIFREEZE returning (all frozen) to the last thaw
    all_frozen_stall: float | None = None
    #: cleancut: the whole cut, uploads and commit included
    wall: float | None = None
    level: str | None = None
    #: cleancut: the application's pause (first pre-script start to last post-script end)
    pause: float | None = None


@dataclass
class HandCut:
    """The hand-made cut of the shop's disks, by the real ioctls on the mount points."""

    disks: list[ShopDisk]
    clone_dir: Path
    fds: list[int] = field(default_factory=list)

    def open(self) -> None:
        """Open every mount point read-only (outside any measured window)."""
        for disk in self.disks:
            self.fds.append(os.open(disk.mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def close(self) -> None:
        """Thaw (in case) and close every mount point."""
        for fd in self.fds:
            _thaw_quietly(fd)
            os.close(fd)
        self.fds.clear()

    def settle(self, seconds: float) -> None:
        """Start every method from the same state: a freeze and thaw checkpoints each disk's
        journal, then the shop writes for ``seconds``. (A freeze's cost grows with the
        journal written since the last checkpoint: without this, whichever method follows
        a freeze looks fast and whichever follows a 4 s cleancut cut looks slow.)"""
        try:
            _ioctl_all(self.fds, FIFREEZE, True)
        finally:
            for fd in self.fds:
                _thaw_quietly(fd)
        time.sleep(seconds)

    def cut(self, parallel: bool) -> Measured:
        """One cut: FIFREEZE all, clone all images, FITHAW all (thawed in ``finally``)."""
        target = self.clone_dir / f"cut-{time.monotonic_ns()}"
        target.mkdir(parents=True)
        pairs = [(disk.image, target / f"{disk.name}.img") for disk in self.disks]
        frozen: list[int] = []
        last_frozen = 0.0
        freeze_called = time.monotonic()  # writers block from the first FIFREEZE call on
        try:
            results = _ioctl_all(self.fds, FIFREEZE, parallel)
            frozen = [fd for fd, (_, err) in zip(self.fds, results, strict=True) if err is None]
            for _, err in results:
                if err is not None:
                    raise err
            last_frozen = max(t for t, _ in results)
            _clone_all(pairs, parallel)
        finally:
            thaws = _ioctl_all(frozen, FITHAW, parallel)
            for fd, (_, err) in zip(frozen, thaws, strict=True):
                if err is not None and err.errno != errno.EINVAL:
                    _thaw_quietly(fd)
            shutil.rmtree(target, ignore_errors=True)
        thawed = max(t for t, _ in thaws)
        return Measured(thawed - freeze_called, all_frozen_stall=thawed - last_frozen)


def _thaw_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # EINVAL: not frozen
        fcntl.ioctl(fd, FITHAW, 0)


def cleancut_cut(config: Path) -> Callable[[], Measured]:
    """A function that runs one cleancut cut of ``config`` and measures it."""
    loaded = load_app(config)
    access = repository_access(loaded.config.repository, config_file=str(config))
    mover = ResticMover(access)

    def run() -> Measured:
        started = time.monotonic()
        manifest = Coordinator(loaded, access=access, mover=mover).run().manifest
        wall = time.monotonic() - started
        stalls = [h.write_stall for h in manifest.hosts if h.write_stall is not None]
        if not stalls:
            raise RuntimeError(f"cut {manifest.rp_id} of {config} recorded no write stall")
        return Measured(max(stalls), wall=wall, level=manifest.level, pause=manifest.max_pause)

    return run


def prune_receipts(receipts: Path, keep_free: float = 0.5) -> int:
    """Delete the oldest half of the receipts once fewer than ``keep_free`` inodes are free."""
    vfs = os.statvfs(receipts)
    if vfs.f_files == 0 or vfs.f_ffree / vfs.f_files >= keep_free:
        return 0
    ids = sorted(int(p.stem) for p in receipts.glob("*.txt") if p.stem.isdigit())
    old = [receipts / receipt_name(order_id) for order_id in ids[: len(ids) // 2]]
    for path in old:
        path.unlink(missing_ok=True)
    return len(old)


Methods = dict[str, Callable[[], Measured]]


@dataclass
class Runs:
    """Every counted cut of every method, and the cuts that failed (with cleancut's error)."""

    measured: dict[str, list[Measured]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)


def run_rounds(
    methods: Methods,
    rounds: int,
    receipts: Path,
    settle: Callable[[], None],
    *,
    warmup: bool = True,
) -> Runs:
    """A warm-up round (not counted) if asked, then ``rounds`` rounds, the order rotating;
    ``settle`` runs before every cut so that each starts from the same state.

    A cleancut cut that fails (e.g. another process held the host's freeze lock) is
    counted as failed and the run goes on; the report lists the errors.
    """
    runs = Runs({name: [] for name in methods}, {name: [] for name in methods})
    names = list(methods)
    for index in range(-1 if warmup else 0, rounds):
        shift = index % len(names)
        figures = []
        for name in names[shift:] + names[:shift]:
            settle()
            try:
                result = methods[name]()
            except Interrupted:
                raise  # Ctrl-C ends the benchmark; it is not a failed cut
            except CleancutError as exc:
                say(f"{name}: the cut failed: {exc}")
                runs.failed[name].append(str(exc))
                continue
            figures.append(f"{name} {ms(result.stall)} ms")
            if index >= 0:
                runs.measured[name].append(result)
        pruned = prune_receipts(receipts)
        label = "warm-up round" if index < 0 else f"round {index + 1}/{rounds}"
        say(f"{label}: {', '.join(figures)}" + (f" (pruned {pruned} receipts)" if pruned else ""))
    return runs


def report(runs: Runs, seconds: float, warmup: bool) -> str:
    """The like-with-like stall table, the hooked cut's stall beside its pause, the notes."""
    measured = runs.measured
    series = {name: Series(name, tuple(m.stall for m in runs)) for name, runs in measured.items()}
    lines = [
        f"write stall under the demo shop's load, {len(series[HAND_PAR].values)} cuts per "
        f"method (interleaved{', after one warm-up round' if warmup else ', no warm-up'}); "
        f"the whole run took {seconds:.0f} s",
        "",
        "the same work on the same disks: freeze, clone the images, thaw",
        table([*HEADERS, "p50/parallel", "p99/parallel"],
              [_compared_row(name, series, runs) for name in METHODS]),
        "ratios are against the hand-made cut in parallel (goal: cleancut <= 1.00)",
        "",
        "the cut with hooks pauses the shop (pre-script) before the freeze and resumes it "
        "(post-script) after the thaw: its users wait for the pause",
        table(["cleancut with hooks", *HEADERS[1:]], _hooked_rows(runs)),
        "",
        f"before every cut: a freeze and thaw of all disks, then {SETTLE_SECONDS:.1f} s of the "
        "shop's load, so each cut flushes the same amount of journal",
    ]  # fmt: skip
    for name in (HAND_SEQ, HAND_PAR):
        inner = Series(name, tuple(m.all_frozen_stall or 0.0 for m in measured[name]))
        lines.append(
            f"{name}, from the last FIFREEZE returning (all frozen): "
            f"p50 {ms(inner.p50)} ms, p99 {ms(inner.p99)} ms"
        )
    lines += _cleancut_notes(runs)
    lines += [
        "cleancut's stall is the manifest's hosts[*].write_stall (first hold - a writer's lock",
        "or the first FIFREEZE call - to the last release), its pause hosts[*].pause (first",
        "pre-script start to last post-script end), both on the guest's monotonic clock; the",
        "hand-made stall runs from the first FIFREEZE call to the last FITHAW returning",
        "(FIFREEZE/FITHAW ioctls, one `cp --reflink=always` per image).",
    ]
    return "\n".join(lines)


def _compared_row(name: str, series: dict[str, Series], runs: Runs) -> list[str]:
    """One row of the like-with-like table: n, failed, p50/p99/mean, ratios to parallel."""
    s, base, failed = series[name], series[HAND_PAR], str(len(runs.failed[name]))
    if not s.values or not base.values:  # every cut of this method (or of the base) failed
        return [name, str(len(s.values)), failed, *figures(s), "-", "-"]
    ratios = [f"{s.p50 / base.p50:.2f}", f"{s.p99 / base.p99:.2f}"]
    return [name, str(len(s.values)), failed, *figures(s), *ratios]


def _hooked_rows(runs: Runs) -> list[list[str]]:
    """The hooked cut's write stall and its application pause, side by side."""
    cuts = runs.measured[HOOKS]
    failed = str(len(runs.failed[HOOKS]))
    stall = Series("write stall", tuple(m.stall for m in cuts))
    pause = Series("application pause", tuple(m.pause for m in cuts if m.pause is not None))
    return [
        [f"{HOOKS}: write stall", str(len(stall.values)), failed, *figures(stall)],
        [f"{HOOKS}: application pause", str(len(pause.values)), failed, *figures(pause)],
    ]


def _cleancut_notes(runs: Runs) -> list[str]:
    """Each cleancut method's levels and whole-cut time, and every failure's error."""
    lines = []
    for name in (HOOKS, PLAIN):
        if not runs.measured[name]:
            continue
        walls = Series(name, tuple(m.wall or 0.0 for m in runs.measured[name]))
        levels = ", ".join(sorted({m.level or "?" for m in runs.measured[name]}))
        lines.append(
            f"{name}: level {levels}; whole cut incl. uploads: "
            f"p50 {walls.p50:.2f} s, mean {walls.mean:.2f} s"
        )
    if runs.measured[HOOKS] and all(m.pause is None for m in runs.measured[HOOKS]):
        lines.append(f"{HOOKS}: the guest recorded no pause (no pre- or post-script ran?)")
    for name, errors in runs.failed.items():
        for error in sorted(set(errors)):
            lines.append(f"{name}: failed {errors.count(error)}x: {error}")
    return lines


def run(rounds: int = 50, *, warmup: bool = True) -> int:
    """Build the demo workspace, run the shop's load and measure; print the figures."""
    require_root("write-stall")
    started = time.monotonic()
    with ExitStack() as stack:
        ws = workspace.build(stack)
        disks = shop_disks(ws)
        hand = HandCut(disks, disks[0].image.parent / "bench-clones")
        stack.callback(shutil.rmtree, hand.clone_dir, True)
        hand.open()
        stack.callback(hand.close)
        say(f"workspace {ws.root}; {ws.why_level}")
        load = stack.enter_context(LoadGenerator(ws.shop, ws.socket))
        methods: Methods = {
            HOOKS: cleancut_cut(ws.app_hooks),
            PLAIN: cleancut_cut(ws.app_plain),
            HAND_SEQ: lambda: hand.cut(parallel=False),
            HAND_PAR: lambda: hand.cut(parallel=True),
        }
        settle = functools.partial(hand.settle, SETTLE_SECONDS)
        runs = run_rounds(methods, rounds, ws.shop.receipts_dir, settle, warmup=warmup)
        stats = load.stop()
        places = {
            "disk images' datastore": disks[0].image,
            "shop disks": disks[0].mount_point,
            "restic repository": ws.root,
        }
        machine = machine_report(places)
    print(report(runs, time.monotonic() - started, warmup))
    print(
        f"the shop wrote {stats.orders} orders in {stats.seconds:.0f} s "
        f"({stats.orders / max(stats.seconds, 1e-9):.0f}/s)"
        + (f"; load error: {stats.error}" if stats.error else "")
    )
    print(machine, flush=True)
    return 0
