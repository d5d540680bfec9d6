"""The cut protocol: its wire format (JSON lines, versioned, garbage refused) and the guest
agent serving it, phase by phase, over a real guest config and a real SQLite database."""

from __future__ import annotations

import contextlib
import json
import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from cleancut import protocol
from cleancut.errors import ProtocolError
from cleancut.guest.agent import GuestAgent


def test_round_trip_of_every_message_kind() -> None:
    messages = [
        protocol.request(7, "freeze", {"deadline": 10.0}),
        protocol.reply(7, {"frozen_at": 1.5, "mounts": ["/srv/orders"]}),
        protocol.failure(None, "FreezeError", "FIFREEZE refused: ünïcode"),
        protocol.event("progress", {"resource": "orders", "bytes_done": 10}),
    ]
    for message in messages:
        line = protocol.encode(message)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1  # one message, one line
        assert protocol.decode(line) == {"v": protocol.PROTOCOL_VERSION, **message}


def test_request_without_args_has_an_empty_dict() -> None:
    decoded = protocol.decode(protocol.encode(protocol.request(1, "hello")))
    assert decoded["args"] == {}
    assert decoded["op"] == "hello"


def test_multiline_strings_stay_on_one_line() -> None:
    line = protocol.encode(protocol.reply(1, {"stdout": "a\nb\n"}))
    assert line.count(b"\n") == 1
    assert protocol.decode(line)["result"]["stdout"] == "a\nb\n"


def test_version_mismatch_names_both_and_the_fix() -> None:
    line = json.dumps({"v": 2, "id": 1, "op": "hello", "args": {}}).encode()
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(line)
    assert "protocol version 2 spoken, 1 expected" in caught.value.message
    assert "install the same cleancut version" in caught.value.message
    assert caught.value.exit_code == 6


def test_missing_version_is_refused() -> None:
    with pytest.raises(ProtocolError, match="protocol version None"):
        protocol.decode(b'{"id": 1, "op": "hello"}\n')


@pytest.mark.parametrize(
    "line", [b"hello\n", b"\xff\xfe garbage\n", b"{not json}\n", b"", b"Traceback (most recent"]
)
def test_garbage_is_a_protocol_error_not_repeating_the_line(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a protocol message") as caught:
        protocol.decode(line)
    if len(line) > 5:
        assert line.decode(errors="replace").strip()[:6] not in caught.value.message


@pytest.mark.parametrize("line", [b"[1, 2]\n", b'"text"\n', b"42\n", b"null\n"])
def test_json_that_is_not_an_object_is_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a protocol message"):
        protocol.decode(line)


def test_a_long_garbage_line_is_shown_shortened() -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(b"x" * 10_000)
    assert len(caught.value.message) < 300


def test_operations_are_in_cut_order() -> None:
    order = [
        protocol.OPERATIONS.index(op)
        for op in ("hello", "prepare", "freeze", "snapshot", "thaw", "upload")
    ]
    assert order == sorted(order)


# -- the guest agent serving the protocol ------------------------------------------------
#
# A real GuestAgent over a real guest config (in a folder that passes the security rules):
# a plain-folder ``copy`` volume that is not frozen, staging beside it, and a SQLite database
# whose write lock the agent must hold from freeze to thaw and release on every path.


@dataclass
class Shop:
    """A guest config with one copy volume holding one SQLite database."""

    config: Path
    volume: Path
    staging: Path
    db: Path


@pytest.fixture
def shop(trusted_dir: Path) -> Shop:
    volume, staging = trusted_dir / "orders", trusted_dir / "staging"
    volume.mkdir()
    staging.mkdir()
    db = volume / "orders.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        conn.execute("INSERT INTO orders (item) VALUES ('book')")
        conn.commit()
    config = trusted_dir / "guest.toml"
    config.write_text(
        f'staging = "{staging}"\n'
        f'[volumes.orders]\npath = "{volume}"\nsnapshot = "copy"\nfreeze = false\n'
        f'[databases.orders]\nkind = "sqlite"\npath = "{db}"\nvolume = "orders"\n',
        encoding="utf-8",
    )
    config.chmod(0o644)
    return Shop(config, volume, staging, db)


def can_write(db: Path) -> bool:
    """Whether another connection gets SQLite's write lock now (``BEGIN IMMEDIATE``)."""
    with contextlib.closing(sqlite3.connect(db, timeout=0.1, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            assert "database is locked" in str(exc)
            return False
        conn.execute("ROLLBACK")
        return True


RP_ID = "20260101T000000Z-test"
HELLO: dict[str, Any] = {
    "protocol": protocol.PROTOCOL_VERSION,
    "rp_id": RP_ID,
    "freeze_timeout": 5,
}


class Wire:
    """The coordinator's end of an agent's stdin/stdout pipes, with timeouts."""

    def __init__(self, stdin: IO[bytes], stdout_fd: int) -> None:
        self.stdin = stdin
        self.stdout_fd = stdout_fd
        self._buffer = b""
        self._ident = 0

    def readline(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.stdout_fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no reply from the agent within {timeout} s")
            chunk = os.read(self.stdout_fd, 65536)
            if not chunk:
                raise AssertionError("the agent closed its output")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line + b"\n"

    def send(self, line: bytes) -> None:
        self.stdin.write(line)
        self.stdin.flush()

    def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request and its reply (events before it are skipped)."""
        self._ident += 1
        self.send(protocol.encode(protocol.request(self._ident, op, args)))
        while True:
            message = protocol.decode(self.readline())
            if "event" not in message:
                assert message["id"] == self._ident
                return message

    def ok(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        message = self.call(op, args)
        assert message["ok"], message
        result: dict[str, Any] = message["result"]
        return result

    def refused(self, op: str, args: dict[str, Any] | None = None) -> dict[str, str]:
        message = self.call(op, args)
        assert not message["ok"], message
        error: dict[str, str] = message["error"]
        return error


@pytest.fixture
def agent(
    shop: Shop, trusted_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Wire, threading.Thread]]:
    """A GuestAgent serving in a thread over real pipes; its stdin is closed at the end.

    The freezer's host-wide lock is moved into the test's folder: these sessions freeze
    nothing, and must not wait for other cuts running on this machine at the same time.
    """
    lock = trusted_dir / "freeze.lock"
    monkeypatch.setattr("cleancut.guest.freezer.default_lock_path", lambda: lock)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    stdin_r, stdin_w = os.fdopen(in_r, "rb"), os.fdopen(in_w, "wb")
    stdout_w = os.fdopen(out_w, "wb")
    served = GuestAgent(shop.config, stdin_r, stdout_w)
    thread = threading.Thread(target=served.serve, daemon=True)
    thread.start()
    try:
        yield Wire(stdin_w, out_r), thread
    finally:
        if not stdin_w.closed:
            stdin_w.close()
        thread.join(10)
        for handle in (stdin_r, stdout_w):
            handle.close()
        os.close(out_r)


def test_phases_in_order_hold_sqlite_from_freeze_to_thaw(
    agent: tuple[Wire, threading.Thread], shop: Shop
) -> None:
    wire, _thread = agent
    hello = wire.ok("hello", HELLO)
    assert hello["protocol"] == protocol.PROTOCOL_VERSION
    inventory = hello["inventory"]
    assert inventory["volumes"]["orders"]["provider"] == "copy"
    assert inventory["volumes"]["orders"]["freeze"] is False
    assert inventory["databases"]["orders"]["journal_mode"] == "wal"
    prepared = wire.ok("prepare")
    assert prepared["writers"]["orders"]["ok"]
    assert can_write(shop.db)  # prepare takes no hold
    frozen = wire.ok("freeze")
    assert frozen["mounts"] == []  # freeze = false: nothing frozen
    assert frozen["writers"]["orders"]["ok"]
    assert not can_write(shop.db)  # the hold is real
    snap = wire.ok("snapshot")
    assert not can_write(shop.db)
    taken = snap["snapshots"]["orders"]
    assert taken["details"]["stall_includes_copy"] is True
    copied = shop.staging / RP_ID / "orders" / "orders.db"
    assert copied.is_file()
    thawed = wire.ok("thaw")
    assert thawed["thawed_at"] >= thawed["thaw_started_at"] >= frozen["frozen_at"]
    assert thawed["self_thawed"] is None
    assert thawed["writers"]["orders"]["details"]["page_count"] >= 2
    assert can_write(shop.db)
    wire.ok("release")
    assert not copied.exists()  # local snapshots deleted on release
    assert wire.ok("bye") == {}


def test_upload_before_thaw_is_refused(agent: tuple[Wire, threading.Thread], shop: Shop) -> None:
    wire, _thread = agent
    upload = {"repository": {"url": "/nonexistent", "password": "x"}, "app": "shop", "host": "h"}
    wire.ok("hello", HELLO)
    error = wire.refused("upload", upload)
    assert error["kind"] == "ProtocolError"
    assert "'upload' is not allowed after 'hello'" in error["message"]
    wire.ok("prepare")
    wire.ok("freeze")
    wire.ok("snapshot")
    error = wire.refused("upload", upload)
    assert error["kind"] == "ProtocolError"
    assert "after 'snapshot'" in error["message"]
    assert not can_write(shop.db)  # a refused request leaves the session where it was
    wire.ok("thaw")
    assert can_write(shop.db)


@pytest.mark.parametrize(
    ("op", "after"), [("freeze", "hello"), ("snapshot", "prepare"), ("thaw", "hello")]
)
def test_skipping_a_phase_is_refused(
    agent: tuple[Wire, threading.Thread], op: str, after: str
) -> None:
    wire, _thread = agent
    wire.ok("hello", HELLO)
    if after == "prepare":
        wire.ok("prepare")
    error = wire.refused(op)
    assert error["kind"] == "ProtocolError"
    assert f"{op!r} is not allowed after {after!r}" in error["message"]


def test_phases_before_hello_are_refused(agent: tuple[Wire, threading.Thread]) -> None:
    wire, _thread = agent
    error = wire.refused("prepare")
    assert error == {"kind": "ProtocolError", "message": "'prepare' before hello"}


def test_wrong_protocol_version_in_hello_is_refused(agent: tuple[Wire, threading.Thread]) -> None:
    wire, _thread = agent
    error = wire.refused("hello", {**HELLO, "protocol": 99})
    assert error["kind"] == "ProtocolError"
    assert "coordinator speaks protocol 99" in error["message"]
    assert "install the same cleancut version everywhere" in error["message"]


def test_wrong_envelope_version_and_garbage_are_answered(
    agent: tuple[Wire, threading.Thread],
) -> None:
    wire, _thread = agent
    wire.send(b'{"v": 2, "id": 1, "op": "hello", "args": {}}\n')
    reply = protocol.decode(wire.readline())
    assert reply["ok"] is False and reply["id"] is None
    assert "protocol version 2 spoken" in reply["error"]["message"]
    wire.send(b"rm -rf /\n")
    reply = protocol.decode(wire.readline())
    assert reply["error"]["kind"] == "ProtocolError"
    assert "not a protocol message" in reply["error"]["message"]
    error = wire.refused("format-disk")
    assert error["message"].startswith("unknown operation (valid: hello, clock, plan,")
    assert "format-disk" not in error["message"]  # nothing a request carried is echoed
    wire.ok("hello", HELLO)  # still serving


def test_hello_sent_twice_is_refused(agent: tuple[Wire, threading.Thread]) -> None:
    wire, _thread = agent
    wire.ok("hello", HELLO)
    assert wire.refused("hello", HELLO)["message"] == "hello sent twice"


def test_config_with_mode_0666_is_refused_at_hello(
    agent: tuple[Wire, threading.Thread], shop: Shop
) -> None:
    wire, _thread = agent
    shop.config.chmod(0o666)
    error = wire.refused("hello", HELLO)
    assert error["kind"] == "HookSecurityError"
    assert str(shop.config) in error["message"]
    assert "writable by group or others (mode 0666)" in error["message"]
    assert f"chmod go-w {shop.config}" in error["message"]


def test_end_of_input_mid_cut_releases_the_hold(
    agent: tuple[Wire, threading.Thread], shop: Shop
) -> None:
    wire, thread = agent
    wire.ok("hello", HELLO)
    wire.ok("prepare")
    wire.ok("freeze")
    wire.ok("snapshot")
    assert not can_write(shop.db)
    wire.stdin.close()  # the coordinator is gone
    thread.join(10)
    assert not thread.is_alive()
    assert can_write(shop.db)
    assert not (shop.staging / RP_ID / "orders").exists()


def test_agent_process_releases_the_hold_when_its_input_closes(shop: Shop) -> None:
    """The real command, ``python -m cleancut guest --config X``, as the local transport runs it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cleancut", "guest", "--config", str(shop.config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        wire = Wire(process.stdin, process.stdout.fileno())
        wire.ok("hello", HELLO)
        wire.ok("prepare")
        wire.ok("freeze")
        assert not can_write(shop.db)
        process.stdin.close()
        assert process.wait(timeout=10) == 0
        assert can_write(shop.db)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
