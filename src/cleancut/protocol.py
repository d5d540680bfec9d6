"""The cut protocol's wire format: one JSON object per line on the guest agent's stdin/stdout.

Requests  ``{"v": 1, "id": 7, "op": "freeze", "args": {...}}``
Replies   ``{"v": 1, "id": 7, "ok": true, "result": {...}}`` or
          ``{"v": 1, "id": 7, "ok": false, "error": {"kind": "FreezeError", "message": "..."}}``
Events    ``{"v": 1, "event": "progress", "data": {...}}`` (any number, before the reply)

The operations, in the order a cut uses them: ``hello``, ``plan`` (dry run), ``prepare``,
``freeze``, ``snapshot``, ``thaw``, ``upload``, ``release``, ``bye``. A guest refuses an
operation out of order, so a confused coordinator cannot, say, upload before a thaw.
"""

from __future__ import annotations

import json
from typing import Any

from cleancut.errors import ProtocolError

PROTOCOL_VERSION = 1
OPERATIONS = ("hello", "plan", "prepare", "freeze", "snapshot", "thaw", "upload", "release", "bye")


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of compact JSON."""
    return json.dumps({"v": PROTOCOL_VERSION, **message}, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One received line as a message; anything else is a ProtocolError."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        shown = line[:200].decode(errors="replace").rstrip()
        raise ProtocolError(f"not a protocol message: {shown!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"not a protocol message: {message!r}")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {message.get('v')!r} spoken, {PROTOCOL_VERSION} expected; "
            "install the same cleancut version on the coordinator and the hosts"
        )
    return message


def request(ident: int, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": ident, "op": op, "args": args or {}}


def reply(ident: int, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": ident, "ok": True, "result": result}


def failure(ident: int | None, kind: str, message: str) -> dict[str, Any]:
    return {"id": ident, "ok": False, "error": {"kind": kind, "message": message}}


def event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": name, "data": data}
