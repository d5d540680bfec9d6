"""``cleancut verify``: the restore drill on SQLite and plain volumes (the database servers'
drills are in test_postgresql.py and test_mariadb.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cleancut.demo.disks import Datastore
from tests.integration.cutlib import App, image_volume, make_app, make_db, sqlite_db

pytestmark = [pytest.mark.root, pytest.mark.restic]

CHECK_ORDERS = """\
import os, pathlib, sqlite3, sys
db = os.environ["CLEANCUT_DB_ORDERS"]
share = pathlib.Path(os.environ["CLEANCUT_VOLUME_RECEIPTS"])
rows = sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone()[0]
receipts = sorted(p.name for p in share.glob("*.pdf"))
print(f"{rows} orders, {len(receipts)} receipts")
sys.exit(0 if rows == len(receipts) == 40 else 1)
"""

CHECK_FAILS = "import sys\nprint('order 7 has no invoice')\nsys.exit(3)\n"


def _app(datastore: Datastore, root: Path, checks: list[tuple[str, list[str]]]) -> App:
    orders = datastore.add_disk("orders", datastore.root / "orders")
    receipts = datastore.add_disk("receipts", datastore.root / "receipts")
    make_db(orders.mountpoint / "orders.db", 40)
    for index in range(40):
        (receipts.mountpoint / f"{index:04d}.pdf").write_text(f"receipt {index}")
    guest = (
        f'staging = "{root / "staging"}"\n'
        + image_volume("orders", orders.mountpoint)
        + image_volume("receipts", receipts.mountpoint)
        + sqlite_db("orders", orders.mountpoint / "orders.db", "orders")
    )
    app = make_app(root, {"vm1": guest})
    (root / "checks").mkdir(mode=0o755)
    (root / "checks" / "orders.py").write_text(CHECK_ORDERS)
    (root / "checks" / "fails.py").write_text(CHECK_FAILS)
    text = app.config.read_text()
    for name, run in checks:
        text += f"\n[[checks]]\nname = {json.dumps(name)}\nrun = {json.dumps(run)}\n"
    app.config.write_text(text)
    return app


def _verify(app: App, *args: str) -> tuple[int, dict[str, Any], str]:
    done = app.run("verify", "latest", "--json", "--sandbox", str(app.root / "sandboxes"), *args)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["verify"], done.stdout + done.stderr
    return done.returncode, events[0], done.stderr


def test_verify_runs_the_applications_checks_on_the_restored_files(
    datastore: Datastore, trusted_dir: Path
) -> None:
    app = _app(
        datastore, trusted_dir, [("every order has its receipt", ["python3", "checks/orders.py"])]
    )
    code, _manifest, stderr = app.backup_json()
    assert code == 3, stderr  # committed; the share has no writer or hook: file-system level

    code, report, stderr = _verify(app)
    assert code == 0, stderr
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["every order has its receipt"]["ok"], checks
    assert "40 orders, 40 receipts" in checks["every order has its receipt"]["detail"]
    assert checks["vm1/orders: file system check"]["ok"]
    assert checks["vm1/receipts: file system check"]["ok"]
    assert checks["vm1/orders: sqlite orders.db integrity_check"]["ok"]
    assert report["ok"] is True and report["rto_seconds"] > 0
    assert not Path(report["sandbox"]).exists()  # removed without --keep


def test_a_failing_check_fails_the_drill_and_keep_leaves_the_sandbox(
    datastore: Datastore, trusted_dir: Path
) -> None:
    app = _app(
        datastore,
        trusted_dir,
        [
            ("every order has its receipt", ["python3", "checks/orders.py"]),
            ("every order has its invoice", ["python3", "checks/fails.py"]),
            ("missing program", ["checks/no-such-check"]),
        ],
    )
    code, _manifest, stderr = app.backup_json()
    assert code == 3, stderr  # committed; the share has no writer or hook: file-system level

    code, report, stderr = _verify(app, "--keep")
    assert code == 1
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["every order has its receipt"]["ok"]
    assert not checks["every order has its invoice"]["ok"]
    assert "exit status 3" in checks["every order has its invoice"]["detail"]
    assert "order 7 has no invoice" in checks["every order has its invoice"]["detail"]
    assert not checks["missing program"]["ok"]
    assert "no such program" in checks["missing program"]["detail"]
    assert report["ok"] is False
    sandbox = Path(report["sandbox"])
    assert (sandbox / "restored" / "vm1" / "orders" / "orders.db").is_file()  # --keep

    human = app.run("verify", "latest", "--sandbox", str(trusted_dir / "sandboxes"))
    assert human.returncode == 1
    assert "FAIL" in human.stdout and "every order has its invoice" in human.stderr


def test_checks_are_validated_in_the_application_file(trusted_dir: Path) -> None:
    app = make_app(trusted_dir, {"vm1": f'staging = "{trusted_dir / "staging"}"\n'})
    app.config.write_text(app.config.read_text() + '\n[[checks]]\nname = "x"\nrun = []\n')
    done = app.run("config check")
    assert done.returncode == 2
    assert "checks" in done.stderr and "run" in done.stderr
