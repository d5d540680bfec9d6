"""[monitoring] on real services: node_exporter's text file checked by Debian's promtool,
a real Prometheus pushgateway scraped over HTTP, Apprise notifications and Healthchecks
pings received by a local HTTP server. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.cutlib import App, make_app

pytestmark = pytest.mark.restic

PROMTOOL = shutil.which("promtool")
PUSHGATEWAY = shutil.which("prometheus-pushgateway")


@dataclass
class Received:
    method: str
    path: str
    body: str


@dataclass
class Listener:
    """A local HTTP server that answers 200 to everything and keeps what it got."""

    port: int
    requests: list[Received] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def wait_for(self, count: int, within: float = 10) -> None:
        deadline = time.monotonic() + within
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def listener() -> Iterator[Listener]:
    got = Listener(0)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace")
            got.requests.append(Received(self.command, self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if PUSHGATEWAY is None:
        pytest.skip("prometheus-pushgateway is not installed (scripts/setup.sh installs it)")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [PUSHGATEWAY, f"--web.listen-address={address}"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "pushgateway.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        (tmp_path / "pushgateway.log").read_text(errors="replace")
                    ) from None
                time.sleep(0.1)
        yield f"http://{address}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _app(root: Path, monitoring: str) -> App:
    guests = {}
    for host in ("vm1", "vm2"):
        folder = root / f"{host}-data"
        folder.mkdir()
        (folder / "file.txt").write_text(f"{host}\n")
        guests[host] = (
            f'staging = "{root / (host + "-staging")}"\n\n'
            f'[volumes.data]\npath = "{folder}"\nsnapshot = "copy"\nfreeze = false\n'
        )
    app = make_app(root, guests)
    with app.config.open("a", encoding="utf-8") as config:
        config.write(f"\n[retention]\nkeep_last = 1\n\n[monitoring]\n{monitoring}\n")
    return app


def _promtool(text: str) -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value, for the lines that are samples."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (package prometheus)")
def test_every_run_rewrites_the_textfile_pushes_and_tells(
    trusted_dir: Path, listener: Listener, pushgateway: str
) -> None:
    tmp_path = trusted_dir
    textfile = tmp_path / "node-exporter" / "cleancut.prom"
    base = f"http://127.0.0.1:{listener.port}"
    app = _app(
        tmp_path,
        f'prometheus_textfile = "{textfile}"\n'
        f'pushgateway = "{pushgateway}"\n'
        f'notify = ["json://127.0.0.1:{listener.port}/hook", '
        f'"ntfy://127.0.0.1:{listener.port}/backups"]\n'
        f'healthchecks = "{base}/ping/abc"\n'
        'on = ["failure", "degraded", "success"]\n',
    )
    # An unfrozen copy is not even crash-consistent: the backup commits, degraded (exit 3).
    code, manifest, stderr = app.backup_json()
    assert code == 3 and manifest is not None, stderr
    listener.wait_for(4)
    paths = listener.paths()
    assert paths[0] == "/ping/abc/start", paths  # the start ping comes before the run
    assert "/ping/abc/fail" in paths  # degraded is in `on`: the check goes down
    hook = [r for r in listener.requests if r.path.startswith("/hook")]
    assert len(hook) == 1
    message = json.loads(hook[0].body)
    assert "backup of itest: degraded" in message["title"]
    assert f"recovery point {manifest['rp_id']}: level none" in message["message"]
    assert "vm1: write stall" in message["message"] and "vm2: write stall" in message["message"]
    assert any(r.path.startswith("/backups") or "backups" in r.body for r in listener.requests)

    text = textfile.read_text()
    _promtool(text)
    samples = _samples(text)
    assert samples['cleancut_last_run_outcome{app="itest",action="backup",outcome="degraded"}'] == 1
    assert samples['cleancut_last_rp_level{app="itest",level="none"}'] == 1
    assert samples['cleancut_recovery_points{app="itest"}'] == 1
    assert samples['cleancut_last_rp_group_consistent{app="itest"}'] in (0, 1)
    for host in manifest["hosts"]:  # nothing froze: no stall is recorded, none is made up
        key = f'cleancut_last_rp_write_stall_seconds{{app="itest",host="{host["host"]}"}}'
        assert samples.get(key) == host["write_stall"]
    assert samples['cleancut_repository_size_bytes{app="itest"}'] > 0
    assert not any(key.startswith("cleancut_last_success_timestamp_seconds") for key in samples)
    assert not list(textfile.parent.glob(".*"))  # the temporary file was renamed away
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"

    # The pushgateway holds the same figures, under job="cleancut", app="itest".
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as answer:
        scraped = answer.read().decode()
    lines = [line for line in scraped.splitlines() if line.startswith("cleancut_recovery_points")]
    assert lines and 'app="itest"' in lines[0] and 'job="cleancut"' in lines[0], lines

    # A forget that works sets forget's last success; one that fails sets the outcome and
    # leaves that time alone.
    time.sleep(1.1)
    assert app.run("backup", "--json").returncode == 3
    done = app.run("forget")
    assert done.returncode == 0, done.stderr
    first = _samples(textfile.read_text())
    success_key = 'cleancut_last_success_timestamp_seconds{app="itest",action="forget"}'
    assert success_key in first
    (tmp_path / "repository.pass").write_text("the wrong password\n")
    failed = app.run("forget")
    assert failed.returncode != 0
    after = textfile.read_text()
    _promtool(after)
    second = _samples(after)
    assert second[success_key] == first[success_key]
    assert second['cleancut_last_run_outcome{app="itest",action="forget",outcome="failure"}'] == 1
    assert second['cleancut_runs_total{app="itest",action="forget",outcome="failure"}'] == 1
    assert second['cleancut_runs_total{app="itest",action="forget",outcome="success"}'] == 1
    failure = [r for r in listener.requests if r.path.startswith("/hook")][-1]
    assert "forget of itest: failure" in json.loads(failure.body)["title"]


def test_an_undeliverable_notification_is_a_warning_not_a_failure(trusted_dir: Path) -> None:
    tmp_path = trusted_dir
    closed = _free_port()  # nothing listens there
    app = _app(
        tmp_path,
        f'notify = ["json://127.0.0.1:{closed}/hook"]\n'
        f'healthchecks = "http://127.0.0.1:{closed}/ping"\n'
        f'prometheus_textfile = "{tmp_path / "out" / "cleancut.prom"}"\n'
        'timeout = "2s"\n',
    )
    code, manifest, stderr = app.backup_json()
    assert code == 3 and manifest is not None, stderr  # the backup's own outcome
    assert "warning: notification not delivered: json://127.0.0.1" in stderr
    assert "ping to http://127.0.0.1 failed" in stderr
    assert (tmp_path / "out" / "cleancut.prom").exists()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (package prometheus)")
def test_metrics_and_status_read_the_run_log(trusted_dir: Path) -> None:
    tmp_path = trusted_dir
    app = _app(tmp_path, 'on = ["failure"]')
    empty = app.run("metrics")
    assert empty.returncode == 0, empty.stderr
    _promtool(empty.stdout)
    assert _samples(empty.stdout) == {'cleancut_recovery_points{app="itest"}': 0}
    status = app.run("status", "--json")
    assert status.returncode == 3  # warnings: no recovery point yet
    report = json.loads(status.stdout)
    assert report["warnings"] == ["no recovery point yet: run `cleancut backup`"]

    code, manifest, stderr = app.backup_json()
    assert code == 3 and manifest is not None, stderr
    metrics = app.run("metrics")
    _promtool(metrics.stdout)
    samples = _samples(metrics.stdout)
    assert samples['cleancut_runs_total{app="itest",action="backup",outcome="degraded"}'] == 1
    status = app.run("status", "--json")
    report = json.loads(status.stdout)
    assert report["actions"]["backup"]["last_run"]["outcome"] == "degraded"
    assert report["newest_rp"]["rp"] == manifest["rp_id"]
    assert any(w.startswith("last backup was degraded") for w in report["warnings"])
    assert any("application-level" in w for w in report["warnings"])
    text = app.run("status")
    assert "warning: last backup was degraded" in text.stdout
    assert "not scheduled" in text.stdout
