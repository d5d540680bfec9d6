"""The guest agent survives any byte sequence on its stdin: a clear protocol error per line,
no traceback, nothing started, and nothing of a request (it may hold the repository
password) repeated in a reply. Also every number is checked: JSON's Infinity and NaN,
and a freeze_timeout above what the host allows, are refused before anything is touched."""

from __future__ import annotations

import json
import os
import select
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleancut import protocol
from cleancut.guest.agent import GuestAgent
from tests.conftest import _trusted_base

SECRET = "s3cr3t-Pa55word"


def serve_bytes(
    config: Path, data: bytes, *, answers_first: int = 0
) -> tuple[list[dict[str, Any]], GuestAgent]:
    """Feed ``data`` to a real GuestAgent over pipes, close its input, collect its replies;
    with ``answers_first`` the input stays open until that many replies came."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    with os.fdopen(in_r, "rb") as stdin, os.fdopen(out_w, "wb") as stdout:
        agent = GuestAgent(config, stdin, stdout)
        thread = threading.Thread(target=agent.serve, daemon=True)
        thread.start()
        output = b""
        if answers_first:
            os.write(in_w, data)
            while output.count(b"\n") < answers_first:
                output += _read_some(out_r, thread)
            data = b""
        writer = threading.Thread(target=_write_all, args=(in_w, data), daemon=True)
        writer.start()
        while chunk := _read_some(out_r, thread):
            output += chunk
        thread.join(10)
        assert not thread.is_alive(), "the agent did not finish after its input closed"
        writer.join(10)
    os.close(out_r)
    return [json.loads(line) for line in output.splitlines()], agent


def _write_all(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data) if len(data) < 60000 else _chunks(fd, data)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def _chunks(fd: int, data: bytes) -> None:
    for start in range(0, len(data), 4096):
        os.write(fd, data[start : start + 4096])


def _read_some(fd: int, thread: threading.Thread) -> bytes:
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                return os.read(fd, 65536)
            except OSError:
                return b""
        if not thread.is_alive():
            ready, _, _ = select.select([fd], [], [], 0)
            return os.read(fd, 65536) if ready else b""


@pytest.fixture(scope="module")
def guest_config() -> Iterator[Path]:
    """A guest config that declares nothing: the fuzz never gets past the protocol anyway."""
    config = Path(os.path.realpath(_trusted_base())) / f"fuzz-guest-{os.getpid()}.toml"
    config.write_text('staging = "/var/lib/cleancut/staging"\n', encoding="utf-8")
    config.chmod(0o600)
    yield config
    config.unlink(missing_ok=True)


def _assert_clean(replies: list[dict[str, Any]], agent: GuestAgent) -> None:
    for reply in replies:
        assert reply.get("v") == protocol.PROTOCOL_VERSION
        assert reply["ok"] is False, reply
        assert reply["error"]["kind"] == "ProtocolError", reply
        assert "Traceback" not in reply["error"]["message"]
        assert SECRET not in json.dumps(reply)
    assert agent.session is None  # no hello got through: nothing was opened or started


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=2000), st.binary(max_size=50))
def test_any_bytes_get_protocol_errors_and_nothing_echoed(
    guest_config: Path, junk: bytes, tail: bytes
) -> None:
    data = junk + SECRET.encode() + tail + b"\n"
    replies, agent = serve_bytes(guest_config, data)
    _assert_clean(replies, agent)
    assert replies, "every non-empty line is answered"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from([*protocol.OPERATIONS, "format-disk"]), JSON, JSON)
def test_requests_with_any_arguments_never_echo_them(
    guest_config: Path, op: str, args: Any, extra: Any
) -> None:
    envelope = {"v": 1, "id": 1, "op": op, "args": {"x": extra, "password": SECRET, "a": args}}
    line = json.dumps(envelope).encode() + b"\n"
    replies, agent = serve_bytes(guest_config, line)
    _assert_clean(replies, agent)


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_infinite_freeze_timeout_is_refused(guest_config: Path, value: str) -> None:
    line = (
        '{"v":1,"id":1,"op":"hello","args":{"protocol":1,"rp_id":"20260101T000000Z-ab12",'
        f'"freeze_timeout":{value}}}}}\n'
    ).encode()
    replies, agent = serve_bytes(guest_config, line)
    _assert_clean(replies, agent)
    assert (
        "freeze_timeout" in replies[0]["error"]["message"]
        or "not a number" in replies[0]["error"]["message"]
    )


def test_freeze_timeout_above_the_hosts_maximum_is_refused(guest_config: Path) -> None:
    hello = protocol.request(
        1, "hello", {"protocol": 1, "rp_id": "20260101T000000Z-ab12", "freeze_timeout": 3600.0}
    )
    replies, agent = serve_bytes(guest_config, protocol.encode(hello), answers_first=1)
    assert replies[0]["ok"] is False
    message = replies[0]["error"]["message"]
    assert "more than this host allows" in message and "max_freeze_timeout" in message
    assert agent.session is None


def test_a_bad_rp_id_never_reaches_a_hook(guest_config: Path) -> None:
    hello = protocol.request(
        1, "hello", {"protocol": 1, "rp_id": "x; rm -rf / #", "freeze_timeout": 5.0}
    )
    replies, agent = serve_bytes(guest_config, protocol.encode(hello))
    _assert_clean(replies, agent)
    assert "rp_id" in replies[0]["error"]["message"]
