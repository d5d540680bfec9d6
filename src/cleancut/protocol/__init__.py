"""The cut protocol's wire format: one JSON object per line on the guest agent's stdin/stdout.

Requests  ``{"v": 1, "id": 7, "op": "freeze", "args": {...}}``
Replies   ``{"v": 1, "id": 7, "ok": true, "result": {...}}`` or
          ``{"v": 1, "id": 7, "ok": false, "error": {"kind": "FreezeError", "message": "..."}}``
Events    ``{"v": 1, "event": "progress", "data": {...}}`` (any number, before the reply)

The operations, in the order a cut uses them: ``hello``, ``clock`` (any number of times:
the guest's time, for the clock offset), ``plan`` (dry run), ``prepare``, ``freeze``,
``snapshot``, ``thaw``, ``upload``, ``release``, ``bye``. A guest refuses an operation out
of order, so a confused coordinator cannot, say, upload before a thaw.

Every request's arguments are validated by a model of that operation (:data:`ARGUMENTS`)
before anything is done with them: numbers must be finite (JSON's ``NaN`` and
``Infinity``, which Python's parser accepts, are refused at the parse), names must be
names. A refusal names the argument and what was wrong, never the value: a request may
carry the repository password.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cleancut.errors import ProtocolError

PROTOCOL_VERSION = 1
OPERATIONS = (
    "hello",
    "clock",
    "plan",
    "prepare",
    "freeze",
    "snapshot",
    "snapshot_disks",
    "thaw",
    "upload",
    "release",
    "bye",
)

#: A recovery point id as :func:`cleancut.manifest.new_rp_id` makes them; it names folders
#: and reaches hooks' environments, so nothing else is accepted.
RpId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Arguments(BaseModel):
    """Base of every operation's arguments: unknown keys are refused, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoArguments(Arguments):
    """clock, prepare, snapshot, thaw, release and bye take no arguments."""


class HelloArgs(Arguments):
    """The coordinator introduces itself and the recovery point it is cutting."""

    protocol: int
    version: str = Field(default="", max_length=64)
    rp_id: RpId
    freeze_timeout: Seconds


class FreezeArgs(Arguments):
    """``snapshot``: snapshot inside the freeze; ``thaw``: and end the holds right after."""

    snapshot: bool = False
    thaw: bool = False


class SnapshotDisksArgs(Arguments):
    """The disk images to clone now, for volumes that other hosts hold frozen."""

    disks: list[Name] = Field(min_length=1, max_length=1024)


class PlanArgs(Arguments):
    """A dry run: the steps a cut would take, with the repository URL to show (masked)."""

    repository: str = Field(max_length=4096)
    app: Name
    host: Name


class RepositoryArgs(Arguments):
    url: str = Field(min_length=1, max_length=4096)
    password: str = Field(min_length=1, max_length=4096)


class UploadArgs(Arguments):
    """Where to upload, and each resource's previous snapshot (restic's parent)."""

    repository: RepositoryArgs
    app: Name
    host: Name
    parents: dict[Name, Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,64}$")]] = {}


ARGUMENTS: dict[str, type[Arguments]] = {
    "hello": HelloArgs,
    "clock": NoArguments,
    "plan": PlanArgs,
    "prepare": NoArguments,
    "freeze": FreezeArgs,
    "snapshot": NoArguments,
    "snapshot_disks": SnapshotDisksArgs,
    "thaw": NoArguments,
    "upload": UploadArgs,
    "release": NoArguments,
    "bye": NoArguments,
}


_MODELS: tuple[type[Arguments], ...] = (*ARGUMENTS.values(), RepositoryArgs)
_FIELD_NAMES = frozenset(name for model in _MODELS for name in model.model_fields)


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of compact JSON."""
    return json.dumps({"v": PROTOCOL_VERSION, **message}, separators=(",", ":")).encode() + b"\n"


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number this protocol accepts")


def decode(line: bytes) -> dict[str, Any]:
    """One received line as a message; anything else is a ProtocolError that does not
    repeat what it was sent (it may hold a password)."""
    try:
        message = json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError(
            f"not a protocol message ({len(line)} bytes): nested too deeply"
        ) from None
    except ValueError as exc:
        reason = str(exc) if "this protocol accepts" in str(exc) else "not valid UTF-8 JSON"
        raise ProtocolError(f"not a protocol message ({len(line)} bytes): {reason}") from None
    if not isinstance(message, dict):
        raise ProtocolError(
            f"not a protocol message: a JSON {type(message).__name__}, not an object"
        )
    if message.get("v") != PROTOCOL_VERSION:
        version = message.get("v")
        shown = repr(version) if isinstance(version, int | None) else "not a number"
        raise ProtocolError(
            f"protocol version {shown} spoken, {PROTOCOL_VERSION} expected; "
            "install the same cleancut version on the coordinator and the hosts"
        )
    return message


def parse_request(message: dict[str, Any]) -> tuple[int, str, Arguments]:
    """A decoded request's id, operation and validated arguments."""
    ident, op = message.get("id"), message.get("op")
    if not isinstance(ident, int) or isinstance(ident, bool) or not 0 <= ident < 2**53:
        raise ProtocolError("a request needs an integer id")
    if not isinstance(op, str) or op not in ARGUMENTS:
        raise ProtocolError(f"unknown operation (valid: {', '.join(OPERATIONS)})")
    args = message.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(f"{op}: args must be an object")
    try:
        return ident, op, ARGUMENTS[op].model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors(include_input=False))
        raise ProtocolError(f"{op}: invalid arguments: {problems}") from None


def _problem(error: Any) -> str:
    # a location may hold the request's own dict keys (a URL with a password, say):
    # only the models' field names and list positions are shown
    parts = [
        str(part) if isinstance(part, int) or part in _FIELD_NAMES else "<key>"
        for part in error["loc"]
    ]
    return f"{'.'.join(parts) or 'args'}: {error['msg']}"


def finite(value: float) -> float:
    """``value`` if it is a finite number, else ValueError (for numbers read from replies)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} is not finite")
    return value


def request(ident: int, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": ident, "op": op, "args": args or {}}


def reply(ident: int, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": ident, "ok": True, "result": result}


def failure(ident: int | None, kind: str, message: str) -> dict[str, Any]:
    return {"id": ident, "ok": False, "error": {"kind": kind, "message": message}}


def event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": name, "data": data}
