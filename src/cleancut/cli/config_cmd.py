"""``cleancut config``: check, generate, show and describe configuration files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cleancut.cli.common import APP_CONFIG
from cleancut.cli.output import out
from cleancut.config.application import AppConfig
from cleancut.config.guest import GuestConfig
from cleancut.config.load import load_app, load_guest
from cleancut.config.samples import APP_SAMPLE, GUEST_SAMPLE
from cleancut.errors import HookSecurityError
from cleancut.guest.freezer import Freezer
from cleancut.guest.hooks import HookSpec, collect_hooks
from cleancut.guest.host_checks import check_snapshot_targets, freeze_paths
from cleancut.guest.security import check_hook_command, load_trusted_guest
from cleancut.providers import disk_providers, volume_providers

app = typer.Typer(
    help="Check, generate, show and describe configuration files.", no_args_is_help=True
)


def check_guest(path: Path) -> GuestConfig:
    """A guest config as its agent would accept it: permissions, keys, hooks and their files.

    The hooks' checks are the agent's own (every file a command runs, Azure's modes for
    Azure's files); a refusal names the file, the rule it broke and the hook it belongs to.
    """
    config = load_trusted_guest(path)
    hooks = collect_hooks(config)
    for spec in hooks:
        _check_hook(spec)
    _check_volumes(config, hooks)
    return config


def _check_volumes(config: GuestConfig, hooks: list[HookSpec]) -> None:
    """What the guest checks at hello about its volumes: each provider's own rules, what
    can be frozen, and that no snapshot is written onto a file system the host freezes."""
    providers = {**volume_providers(config), **disk_providers(config)}
    for provider in providers.values():
        provider.check()
    freezer = Freezer(freeze_paths(config, hooks), allow_root=config.allow_root_freeze)
    check_snapshot_targets(providers, freezer.mounts)


def _check_hook(spec: HookSpec) -> None:
    for phase, argv, pin in (
        ("pre", spec.pre, spec.pre_sha256),
        ("post", spec.post, spec.post_sha256),
    ):
        if argv is None:
            continue
        try:
            with check_hook_command(argv, pin):
                pass
        except HookSecurityError as exc:
            where = f"{exc.rule} (hook {spec.name!r}, its {phase} command {' '.join(argv)})"
            raise HookSecurityError(exc.path, where, exc.fix) from None


@app.command("check")
def check(config: Path = APP_CONFIG) -> None:
    """Validate the application config and the guest config of each local host.

    Exits 2 with the file, the key, what was wrong and what would be valid.
    """
    loaded = load_app(config)
    for name, host in loaded.config.hosts.items():
        if host.guest_config is None:
            out.print(
                f"host {name}: {host.connect}: its guest config lives on the host and is "
                "checked there at hello (`cleancut backup --dry-run` runs that check)",
                markup=False,
            )
            continue
        guest = check_guest(host.guest_config)
        out.print(
            f"host {name}: {host.guest_config} ok — {len(guest.volumes)} volume(s), "
            f"{len(guest.databases)} database(s), {len(collect_hooks(guest))} hook(s)",
            markup=False,
        )
    out.print(f"{loaded.path}: ok", markup=False)


@app.command("generate")
def generate(
    guest: bool = typer.Option(
        False, "--guest", help="The guest config instead of the application's."
    ),
) -> None:
    """Print a commented sample config to start from."""
    print(GUEST_SAMPLE if guest else APP_SAMPLE, end="")


@app.command("show")
def show(config: Path = APP_CONFIG) -> None:
    """Print the effective configuration with defaults filled in, guest configs included."""
    loaded = load_app(config)
    effective: dict[str, Any] = loaded.config.model_dump(mode="json")
    for name, host in loaded.config.hosts.items():
        if host.guest_config is not None:  # an SSH host's guest config lives on the host
            guest = load_guest(host.guest_config)
            effective["hosts"][name]["guest"] = guest.model_dump(mode="json")
    print(json.dumps(effective, indent=2))


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of both files, for editors."""
    print(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "application": AppConfig.model_json_schema(),
                "guest": GuestConfig.model_json_schema(),
            },
            indent=2,
        )
    )
