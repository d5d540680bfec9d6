"""``python -m bench.forget [--points N]``: what ``cleancut forget`` costs, against
forgetting the same restic snapshots one ``restic forget ID`` each, and what ``cleancut
catalog rebuild`` of the same catalog costs.

Three local hosts each back up their own small folder (``snapshot = "copy"``, unfrozen,
each with its own staging), so each recovery point (RP) is four restic snapshots: one
member per host and the manifest. ``N`` RPs are taken for real through the coordinator
(what ``cleancut backup`` runs, without a Python start per RP), at most one per second:
an RP id is its second plus four random hex digits, and nothing else keeps two RPs of one
second apart (two equal ids would share one catalog row). The repository, the catalog and
restic's cache (a HOME of the benchmark's own) are then copied with ``cp -a``, and each
measurement runs on its own identical copy:

* **cleancut**: the whole ``cleancut forget --json CONFIG`` with ``keep_last = 1`` (it
  forgets the N-1 older RPs: list, forget the manifests, forget the members);
* **baseline**: ``restic forget ID`` once per snapshot of the same N-1 RPs, members and
  manifests (their ids listed beforehand, untimed);
* **rebuild**: the whole ``cleancut catalog rebuild CONFIG`` of the N RPs, the catalog
  file removed first (what the status figures cost when the catalog is rebuilt first).

A ``restic`` wrapper first on PATH logs every restic process start, so the calls are
counted, not only reported. After the forget ``cleancut points`` must list only the
newest RP, and after both forgets the repository must hold exactly that RP's four
snapshots, so the figures are of a correct forget. The workspace is removed at the end,
also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import machine_report, say, table, workspace, write_private
from bench.mover import cleancut_command
from cleancut import signals
from cleancut.catalog import Catalog
from cleancut.config.load import load_app
from cleancut.coordinator import Coordinator
from cleancut.coordinator.repository import repository_access
from cleancut.coordinator.runlock import lock_folder
from cleancut.errors import Interrupted
from cleancut.manifest import MANIFEST_TAG
from cleancut.mover.restic import ResticMover, parse_tags

POINTS = 200
QUICK_POINTS = 3
HOSTS = ("vm1", "vm2", "vm3")
SNAPSHOTS_PER_RP = len(HOSTS) + 1
PROGRESS_EVERY = 20

CLEANCUT = "cleancut forget"
BASELINE = "restic forget ID, one call each"
RATIO = "ratio baseline / cleancut"
HEADERS = ("forget", "wall s", "restic calls", "restic starts")
REBUILD = "cleancut catalog rebuild"
REBUILD_HEADERS = ("catalog", "RPs", "wall s", "ms per RP", "restic starts")

_TIMEOUT = 3600.0
_STAMP = "%Y%m%dT%H%M%SZ"

#: First on PATH: one log line per restic process start, then the real restic.
COUNTING_RESTIC = """#!/bin/sh
echo "$*" >> "{log}"
exec "{restic}" "$@"
"""


@dataclass(frozen=True)
class Bench:
    """The workspace: the application's (unique) name, its password file, the counting
    wrapper's folder and its log. Each place below ``root`` (``original`` and its copies)
    holds a repository, a catalog, restic's cache (``home``) and an app config."""

    root: Path
    app: str
    password: Path
    bin: Path
    log: Path

    def env(self, place: Path, *, restic: bool = False) -> dict[str, str]:
        """The environment of a command on ``place``: its own HOME (so its own restic
        cache), the counting wrapper first on PATH; with ``restic``, the repository too."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        path = env.get("PATH", os.defpath)
        env.update(HOME=str(place / "home"), PATH=f"{self.bin}{os.pathsep}{path}", NO_COLOR="1")
        if restic:
            env["RESTIC_REPOSITORY"] = str(place / "repository")
            env["RESTIC_PASSWORD_FILE"] = str(self.password)
        return env

    def starts(self) -> list[str]:
        """The restic command lines logged since the last call (the log is emptied)."""
        lines = self.log.read_text(encoding="utf-8").splitlines() if self.log.exists() else []
        self.log.write_text("", encoding="utf-8")
        return lines


#: One restic snapshot of the application: its short id and its tags.
Stored = tuple[str, dict[str, str]]


@dataclass(frozen=True)
class Measured:
    """One timed command: wall seconds, the calls it made or reports, the restic starts."""

    seconds: float
    calls: int
    starts: list[str]


def build(root: Path) -> Bench:
    """The hosts' folders and guest configs, the wrapper, and the original place."""
    app = f"benchforget-{secrets.token_hex(3)}"  # its own run lock, removed at the end
    bench = Bench(root, app, root / "repository.pass", root / "bin", root / "restic-starts.log")
    write_private(bench.password, f"bench-{secrets.token_hex(16)}\n")
    for host in HOSTS:
        data = root / "hosts" / host / "data"
        data.mkdir(parents=True)
        (data / "file.txt").write_text(f"{host}\n", encoding="utf-8")
        write_private(
            root / "hosts" / host / "guest.toml",
            f'staging = "{root / "hosts" / host / "staging"}"\n\n'
            f'[volumes.data]\npath = "{data}"\nsnapshot = "copy"\nfreeze = false\n',
        )
    restic = shutil.which("restic")
    if restic is None:
        raise RuntimeError("restic is not on PATH: run `make setup` or `apt-get install restic`")
    bench.bin.mkdir()
    wrapper = bench.bin / "restic"
    wrapper.write_text(COUNTING_RESTIC.format(log=bench.log, restic=restic), encoding="utf-8")
    wrapper.chmod(0o755)
    original = bench.root / "original"
    (original / "home").mkdir(mode=0o700, parents=True)
    write_config(bench, original)
    return bench


def write_config(bench: Bench, place: Path) -> Path:
    """The application config of one place (its repository and catalog, keep_last = 1)."""
    lines = [
        f'name = "{bench.app}"',
        'on_failure = "degrade"',
        f'catalog = "{place / "catalog.sqlite"}"',
        "",
        "[repository]",
        f'url = "{place / "repository"}"',
        f'password_file = "{bench.password}"',
        "",
    ]
    for host in HOSTS:
        guest = bench.root / "hosts" / host / "guest.toml"
        lines += [f"[hosts.{host}]", 'connect = "local"', f'guest_config = "{guest}"', ""]
    lines += ["[retention]", "keep_last = 1", ""]
    config = place / "app.toml"
    write_private(config, "\n".join(lines))
    return config


@contextmanager
def _home(path: Path) -> Iterator[None]:
    """HOME (so restic's cache) for the coordinator, its guests and their restic."""
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = before


def _pace(previous: str | None) -> float:
    """Wait until the clock is past the second of the previous RP id; the seconds waited."""
    if previous is None:
        return 0.0
    second = datetime.strptime(previous[:16], _STAMP).replace(tzinfo=UTC).timestamp()
    wait = second + 1 - time.time()
    if wait > 0:
        time.sleep(wait)
    return max(wait, 0.0)


def take_points(bench: Bench, count: int) -> tuple[list[str], float, float]:
    """``count`` real RPs of the original place: their ids, seconds taken, seconds paced."""
    place = bench.root / "original"
    loaded = load_app(place / "app.toml")
    access = repository_access(loaded.config.repository, config_file=str(loaded.path))
    mover, catalog = ResticMover(access), Catalog(place / "catalog.sqlite")
    ids: list[str] = []
    paced = 0.0
    started = time.monotonic()
    with _home(place / "home"):
        # restic init first: a Ctrl-C that lands in the first cut is then a cut's Ctrl-C
        mover.ensure_repository()
        say(f"taking {count} recovery points of a {len(HOSTS)}-host application")
        for index in range(1, count + 1):
            paced += _pace(ids[-1] if ids else None)
            outcome = Coordinator(loaded, access=access, mover=mover, catalog=catalog).run()
            ids.append(outcome.manifest.rp_id)
            if index % PROGRESS_EVERY == 0 or index == count:
                say(f"{index}/{count} recovery points ({time.monotonic() - started:.0f} s)")
    if len({rp[:16] for rp in ids}) != len(ids):
        raise RuntimeError(f"two RPs share a second despite the pacing: {sorted(ids)}")
    return ids, time.monotonic() - started, paced


def copy_place(bench: Bench, name: str) -> Path:
    """An identical ``cp -a`` copy of the original place, its config pointing at itself."""
    place = bench.root / name
    subprocess.run(["cp", "-a", str(bench.root / "original"), str(place)], check=True)
    write_config(bench, place)
    return place


def _run(argv: list[str], env: dict[str, str], what: str) -> tuple[float, str]:
    """Run ``argv`` to the end: its wall seconds and stdout; fails loudly on an error."""
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=_TIMEOUT)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{what}: {' '.join(argv)} exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return seconds, done.stdout


def stored(bench: Bench, place: Path) -> list[Stored]:
    """The application's snapshots in ``place``'s repository (untimed, uncounted)."""
    argv = ["restic", "snapshots", "--json", "--tag", f"app={bench.app}"]
    _seconds, output = _run(argv, bench.env(place, restic=True), "listing the snapshots")
    bench.starts()
    records: list[dict[str, Any]] = json.loads(output) or []
    return [(r["short_id"], parse_tags(r.get("tags") or [])) for r in records]


def measure_forget(bench: Bench, place: Path) -> tuple[Measured, list[str], int]:
    """``cleancut forget``: its figures, the RPs it forgot and the snapshots it removed."""
    argv = [*cleancut_command(), "forget", "--json", str(place / "app.toml")]
    bench.starts()
    seconds, output = _run(argv, bench.env(place), "cleancut forget")
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (result,) = [event for event in events if event.get("event") == "forget"]
    forgotten = [point["rp"] for point in result["forgotten"]]
    measured = Measured(seconds, int(result["restic_calls"]), bench.starts())
    return measured, forgotten, int(result["removed_snapshots"])


def measure_baseline(bench: Bench, place: Path, forgotten: list[str]) -> Measured:
    """``restic forget ID`` once per snapshot of the ``forgotten`` RPs."""
    gone = set(forgotten)
    ids = [sid for sid, tags in stored(bench, place) if tags.get("rp") in gone]
    env = bench.env(place, restic=True)
    wrapper = str(bench.bin / "restic")
    started = time.monotonic()
    for index, snapshot_id in enumerate(ids, 1):
        _run([wrapper, "forget", snapshot_id], env, "the baseline")
        if index % (PROGRESS_EVERY * SNAPSHOTS_PER_RP) == 0:
            say(f"baseline: {index}/{len(ids)} snapshots forgotten")
    return Measured(time.monotonic() - started, len(ids), bench.starts())


def measure_rebuild(bench: Bench, place: Path, count: int) -> Measured:
    """``cleancut catalog rebuild`` of ``count`` RPs into a removed catalog."""
    catalog = place / "catalog.sqlite"
    catalog.unlink()
    argv = [*cleancut_command(), "catalog", "rebuild", str(place / "app.toml")]
    bench.starts()
    seconds, output = _run(argv, bench.env(place), "cleancut catalog rebuild")
    rebuilt = len(Catalog(catalog).list(bench.app))
    if rebuilt != count or f"catalog rebuilt: {count} " not in output:
        raise RuntimeError(f"the rebuild of {catalog} made {rebuilt} RPs of {count}: {output}")
    return Measured(seconds, rebuilt, bench.starts())


def check_kept(bench: Bench, place: Path, kept: str, what: str) -> None:
    """Exactly the kept RP's snapshots remain in ``place``, all of them, as its catalog
    entry names them; fails loudly otherwise."""
    found = stored(bench, place)
    ids = {sid for sid, _tags in found}
    others = sorted({tags.get("rp", "?") for _sid, tags in found} - {kept})
    members = {(tags.get("host"), tags.get("resource")) for _sid, tags in found}
    manifests = [sid for sid, tags in found if MANIFEST_TAG in tags]
    entry = Catalog(place / "catalog.sqlite").get(bench.app, kept)
    named = {m.repository_snapshot for m in entry.manifest.members} | {entry.manifest_snapshot}
    if others or len(manifests) != 1 or len(found) != SNAPSHOTS_PER_RP or named - ids:
        raise RuntimeError(
            f"after {what}, {place / 'repository'} is not exactly the kept RP {kept}: other "
            f"RPs {others[:5]}, {len(manifests)} manifests, members {sorted(map(str, members))}, "
            f"missing {sorted(str(i) for i in named - ids)}"
        )


def check_points(bench: Bench, place: Path, kept: str) -> None:
    """``cleancut points`` lists exactly the kept RP."""
    argv = [*cleancut_command(), "points", "--json", str(place / "app.toml")]
    _seconds, output = _run(argv, bench.env(place), "cleancut points")
    listed = [point["rp"] for point in json.loads(output)]
    if listed != [kept]:
        raise RuntimeError(f"after the forget `cleancut points` lists {listed}, not [{kept}]")
    bench.starts()


def _by_command(starts: list[str]) -> str:
    """restic starts by subcommand, e.g. ``snapshots 1, forget 2``."""
    words = Counter(
        next((w for w in line.split() if not w.startswith("-")), "?") for line in starts
    )
    return ", ".join(f"{word} {n}" for word, n in words.items()) or "none"


def report(count: int, ours: Measured, base: Measured, rebuild: Measured, took: float) -> str:
    """The forget table with its ratio row, the rebuild table and what they measure."""
    rows = [
        [CLEANCUT, f"{ours.seconds:.2f}", str(ours.calls), str(len(ours.starts))],
        [BASELINE, f"{base.seconds:.2f}", str(base.calls), str(len(base.starts))],
        [
            RATIO,
            f"{base.seconds / ours.seconds:.1f}",
            f"{base.calls / ours.calls:.1f}",
            f"{len(base.starts) / max(len(ours.starts), 1):.1f}",
        ],
    ]
    per_rp = rebuild.seconds / count * 1000
    starts = str(len(rebuild.starts))
    rebuilt = [[REBUILD, str(count), f"{rebuild.seconds:.2f}", f"{per_rp:.1f}", starts]]
    forgotten = count - 1
    return "\n".join(
        [
            f"forget of {forgotten} of {count} recovery points of a {len(HOSTS)}-host "
            f"application (keep_last = 1): {forgotten * SNAPSHOTS_PER_RP} restic snapshots "
            f"({len(HOSTS)} members and 1 manifest per RP), wall clock (the whole run took "
            f"{took:.0f} s)",
            "",
            table(HEADERS, rows),
            "",
            f"cleancut: the whole `cleancut forget` command (Python start included); its "
            f"restic calls as it reports them, its restic starts as counted: "
            f"{_by_command(ours.starts)}",
            "baseline: one `restic forget ID` per snapshot of the same RPs, their ids given "
            "(the listing that finds them is not timed)",
            "",
            table(REBUILD_HEADERS, rebuilt),
            "",
            f"rebuild: the whole `cleancut catalog rebuild` into a removed catalog, restic's "
            f"cache warm: {_by_command(rebuild.starts)}",
        ]
    )


def _measure(bench: Bench, count: int) -> tuple[Measured, Measured, Measured]:
    """Take the points, copy them three times, measure each copy, check the forgets."""
    ids, seconds, paced = take_points(bench, count)
    say(f"{count} RPs in {seconds:.0f} s ({seconds / count:.2f} s each; paced {paced:.1f} s)")
    copies = {name: copy_place(bench, name) for name in ("rebuild", "forget", "baseline")}
    say("cleancut catalog rebuild")
    rebuild = measure_rebuild(bench, copies["rebuild"], count)
    say("cleancut forget")
    ours, forgotten, removed = measure_forget(bench, copies["forget"])
    check_points(bench, copies["forget"], ids[-1])
    check_kept(bench, copies["forget"], ids[-1], "cleancut forget")
    say(f"baseline: restic forget of {removed} snapshots, one call each")
    base = measure_baseline(bench, copies["baseline"], forgotten)
    check_kept(bench, copies["baseline"], ids[-1], "the baseline")
    if sorted(forgotten) != ids[:-1] or base.calls != removed:
        raise RuntimeError(
            f"cleancut forgot {len(forgotten)} RPs ({removed} snapshots), expected "
            f"{count - 1}; the baseline forgot {base.calls} snapshots"
        )
    return ours, base, rebuild


def run(count: int = POINTS) -> int:
    """Build, take ``count`` points, measure, print; the workspace is always removed."""
    if os.geteuid() != 0:
        say(
            "the forget benchmark needs root: its workspace is under /var/lib/cleancut/bench "
            "(root-owned, as guest configs must be); run it as root"
        )
        return 2
    signals.install()  # SIGTERM/SIGHUP unwind like Ctrl-C, so the workspace goes
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            root = workspace("forget-")
            stack.callback(subprocess.run, ["rm", "-rf", "--one-file-system", str(root)])
            say(f"workspace {root}")
            bench = build(root)
            stack.callback((lock_folder() / f"{bench.app}.lock").unlink, missing_ok=True)
            ours, base, rebuild = _measure(bench, count)
            machine = machine_report({"repositories and catalogs": root})
    except (KeyboardInterrupt, signals.StopSignal, Interrupted) as exc:
        say(f"forget benchmark interrupted ({type(exc).__name__}); its workspace was removed")
        return 130
    print(report(count, ours, base, rebuild, time.monotonic() - started))
    print(machine)
    print("this benchmark: `.venv/bin/python -m bench.forget [--points N]`", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forget", description=__doc__)
    parser.add_argument(
        "--points", type=int, default=POINTS, help=f"recovery points to take (default {POINTS})"
    )
    args = parser.parse_args(argv)
    if args.points < 2:
        parser.error("--points must be at least 2 (keep_last = 1 keeps one, forgets the rest)")
    return run(args.points)


if __name__ == "__main__":
    raise SystemExit(main())
