"""``python -m bench.status [--points 1000]``: wall time of ``cleancut status`` and
``cleancut metrics`` on an application with N recovery points in its catalog.

Both read only the catalog and the run log, never the repository, so the figure is the
same whatever the repository holds: the catalog is filled with N manifests of a 3-host
application (one every hour, as a schedule would leave them) and a run log with a
backup, forget, check and verify each. The baseline named is the same commands on an
empty catalog (Python start-up and loading the config), measured in the same run. What a
catalog rebuild costs first is measured by ``python -m bench.forget`` (about one restic
dump per RP).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cleancut.catalog import Catalog
from cleancut.manifest import HostTimings, Manifest, Member
from cleancut.runs import RunLog, runs_path

APP = "benchstatus"
REPEAT = 5


def _manifest(index: int, start: datetime) -> Manifest:
    created = start + timedelta(hours=index)
    hosts = [f"vm{n}" for n in (1, 2, 3)]
    return Manifest(
        app=APP,
        rp_id=created.strftime("%Y%m%dT%H%M%SZ") + f"-{index % 65536:04x}",
        created_at=created,
        on_failure="degrade",
        level="application",
        group_consistent=True,
        hosts=[HostTimings(host=h, write_stall=0.08, pause=0.3) for h in hosts],
        members=[
            Member(
                host=h,
                resource="data",
                provider="image",
                layout="file",
                source_path=f"/srv/{h}",
                frozen=True,
                level="application",
                reason="frozen, writers held",
                repository_snapshot=f"{index:056x}{n:08x}",
                bytes_processed=1 << 30,
                bytes_added=1 << 20,
            )
            for n, h in enumerate(hosts)
        ],
    )


def _write_app(root: Path, points: int) -> Path:
    catalog = root / "catalog.sqlite"
    guest = root / "guest.toml"
    guest.write_text('[volumes.data]\npath = "/srv"\nsnapshot = "copy"\nfreeze = false\n')
    guest.chmod(0o600)
    config = root / "app.toml"
    config.write_text(
        f'name = "{APP}"\ncatalog = "{catalog}"\n[repository]\nurl = "{root / "repo"}"\n'
        f'[hosts.vm1]\nconnect = "local"\nguest_config = "{guest}"\n'
        '[schedule]\nbackup = "hourly"\ncheck = "weekly"\n'
    )
    config.chmod(0o600)
    store = Catalog(catalog)
    start = datetime.now(UTC) - timedelta(hours=points)
    for index in range(points):
        store.add(_manifest(index, start), f"{index:064x}")
    runs = RunLog(runs_path(catalog, APP))
    for action in ("backup", "forget", "check", "verify"):
        run = runs.start(APP, action)
        runs.finish(run, "success", {"rto_seconds": 3.2, "repository_size_bytes": 1 << 34})
    return config


def _time(argv: list[str]) -> float:
    samples = []
    for _ in range(REPEAT):
        begun = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        samples.append(time.perf_counter() - begun)
        if done.returncode not in (0, 3):
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.status", description=__doc__)
    parser.add_argument("--points", type=int, default=1000, help="RPs in the catalog")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="cleancut-bench-status-"))
    try:
        (root / "empty").mkdir()
        empty = _write_app(root / "empty", 0)
        full_root = root / "full"
        full_root.mkdir()
        begun = time.perf_counter()
        full = _write_app(full_root, args.points)
        filled = time.perf_counter() - begun
        cleancut = [sys.executable, "-m", "cleancut"]
        rows = []
        for command in ("status", "metrics"):
            base = _time([*cleancut, command, str(empty)])
            many = _time([*cleancut, command, str(full)])
            rows.append((command, base, many))
        print(f"catalog of {args.points} RPs (3 hosts each) written in {filled:.1f} s")
        print(f"{'command':<10} {'0 RPs s':>9} {f'{args.points} RPs s':>12} {'ratio':>7}")
        for command, base, many in rows:
            print(f"{command:<10} {base:>9.3f} {many:>12.3f} {many / base:>7.2f}")
        print(f"(median of {REPEAT} runs each, whole command including Python start-up)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
