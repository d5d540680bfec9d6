"""Azure Backup's ``VMSnapshotScriptPluginConfig.json``, accepted exactly as Azure publishes it.

The template (fixtures/azure) has empty strings in the params lists, empty script
locations until the user fills them in, a 30 s timeout (Azure allows 1..1800), no retries,
``continueBackupOnFailure: true`` and ``fsFreezeEnabled: true``.

Azure's own permission rules apply on top of cleancut's (an imported format keeps its
platform's rules): the file must be owned by root with mode 0600 or stricter, and each
script it names owned by root with mode 0700 or stricter — no group or other permission
bit at all, read included. Everything the scripts run is checked at hello and before each
run like any hook (:func:`~cleancut.guest.security.check_hook_command`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

from cleancut.errors import ConfigError
from cleancut.guest.hooks.spec import HookSpec, Phase
from cleancut.guest.security import PrivateMode, check_private_file, open_config

MAX_TIMEOUT = 1800
MAX_RETRIES = 10
#: Azure Backup's rules for its files (it refuses any group or other permission bit).
CONFIG_MODE = PrivateMode("Azure Backup", 0o600)
SCRIPT_MODE = PrivateMode("Azure Backup", 0o700)

#: key → (type, default); the defaults are those of Azure's template.
FIELDS: dict[str, tuple[type, Any]] = {
    "pluginName": (str, None),
    "preScriptLocation": (str, ""),
    "postScriptLocation": (str, ""),
    "preScriptParams": (list, []),
    "postScriptParams": (list, []),
    "preScriptNoOfRetries": (int, 0),
    "postScriptNoOfRetries": (int, 0),
    "timeoutInSeconds": (int, 30),
    "continueBackupOnFailure": (bool, True),
    "fsFreezeEnabled": (bool, True),
    "ScriptsExecutionPollTimeSeconds": (int, 3),
}


def azure_specs(path: Path) -> list[HookSpec]:
    """The Azure hook declared in ``path``: always one spec, carrying ``fsFreezeEnabled``.

    With both script locations empty (the template as published) the spec has no scripts
    but still tells the agent whether to freeze.

    Raises:
        HookSecurityError: the file, or a script it names, fails the permission checks
            (Azure's included: 0600 for the file, 0700 for the scripts).
        ConfigError: unknown key, wrong type or value out of range (names file and key).
    """
    if not path.exists():
        raise ConfigError(
            "no such file",
            file=str(path),
            key="hooks_import.azure",
            hint="fill in Azure's template and place it there, or remove hooks_import.azure",
        )
    with open_config(path, private=CONFIG_MODE) as trusted:
        raw = trusted.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not valid JSON: {exc}", file=str(path)) from exc
    values = _typed_values(data, str(path))
    if values["pluginName"] != "ScriptRunner":
        _fail(
            path, "pluginName", f"is {values['pluginName']!r}", 'Azure\'s value is "ScriptRunner"'
        )
    timeout = values["timeoutInSeconds"]
    if not 1 <= timeout <= MAX_TIMEOUT:
        _fail(path, "timeoutInSeconds", f"{timeout} is out of range", f"1 to {MAX_TIMEOUT} seconds")
    for phase in ("pre", "post"):
        retries = values[f"{phase}ScriptNoOfRetries"]
        if not 0 <= retries <= MAX_RETRIES:
            _fail(
                path,
                f"{phase}ScriptNoOfRetries",
                f"{retries} is out of range",
                f"0 to {MAX_RETRIES}",
            )
    return [
        HookSpec(
            name="azure",
            source="azure",
            pre=_argv(values, "pre", path),
            post=_argv(values, "post", path),
            timeout=float(timeout),
            pre_retries=values["preScriptNoOfRetries"],
            post_retries=values["postScriptNoOfRetries"],
            continue_on_failure=values["continueBackupOnFailure"],
            freeze=values["fsFreezeEnabled"],
            details={
                "config": str(path),
                "poll_seconds": values["ScriptsExecutionPollTimeSeconds"],
            },
        )
    ]


def _typed_values(data: Any, file: str) -> dict[str, Any]:
    """Every known key with its value (or Azure's default), each of the right type."""
    if not isinstance(data, dict):
        raise ConfigError("must be a JSON object", file=file, hint="see Azure's template")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}",
            file=file,
            key=unknown[0],
            hint=f"valid keys: {', '.join(FIELDS)}",
        )
    if "pluginName" not in data:
        raise ConfigError(
            "required key is missing",
            file=file,
            key="pluginName",
            hint='Azure\'s value is "ScriptRunner"',
        )
    values = {}
    for key, (kind, default) in FIELDS.items():
        value = data.get(key, default)
        # bool is an int in Python; Azure's json keeps them apart, so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"must be {_KIND_NAMES[kind]}, not {json.dumps(value)}", file=file, key=key
            )
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ConfigError("must be a list of strings", file=file, key=key)
        values[key] = value
    return values


_KIND_NAMES = {str: "a string", list: "a list of strings", int: "an integer", bool: "true or false"}


def _argv(values: dict[str, Any], phase: Phase, path: Path) -> list[str] | None:
    location: str = values[f"{phase}ScriptLocation"]
    params = [p for p in values[f"{phase}ScriptParams"] if p != ""]
    if not location:
        if params:
            _fail(
                path,
                f"{phase}ScriptParams",
                f"given, but {phase}ScriptLocation is empty",
                f"fill in {phase}ScriptLocation or empty the params",
            )
        return None
    if not location.startswith("/"):
        _fail(
            path,
            f"{phase}ScriptLocation",
            f"{location!r} is not an absolute path",
            "hooks run without a shell and without PATH",
        )
    # A missing script is refused by the hook check at hello, naming it.
    if os.path.lexists(location):
        check_private_file(Path(location), SCRIPT_MODE, executable=True)
    return [location, *params]


def _fail(path: Path, key: str, message: str, hint: str) -> NoReturn:
    raise ConfigError(message, file=str(path), key=key, hint=hint)
