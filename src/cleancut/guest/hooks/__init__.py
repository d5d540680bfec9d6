"""Hooks: users' pre-/post-scripts in four formats, checked and run safely (DESIGN.md §4).

* :func:`collect_hooks` — every hook a guest config declares or imports, in run order:
  native ``[[hooks]]`` first, then Azure, GCP and qemu-ga;
* :func:`run_hook` — one phase of one hook, run from its checked file descriptor, with a
  clean environment, timeout, retries and bounded output, recorded as a
  :class:`~cleancut.manifest.HookRun`.
"""

from __future__ import annotations

from cleancut.config.guest import GuestConfig
from cleancut.guest.hooks.azure import azure_specs
from cleancut.guest.hooks.gcp import gcp_specs
from cleancut.guest.hooks.native import native_specs
from cleancut.guest.hooks.qemu_ga import qemu_ga_specs
from cleancut.guest.hooks.runner import run_hook
from cleancut.guest.hooks.spec import HookSpec, Phase, Source

__all__ = ["HookSpec", "Phase", "Source", "collect_hooks", "run_hook"]


def collect_hooks(config: GuestConfig) -> list[HookSpec]:
    """Every hook of ``config``: native first, then Azure, GCP, qemu-ga imports.

    Raises:
        ConfigError: an imported file or folder is invalid.
        HookSecurityError: the Azure json fails the permission checks.
    """
    imports = config.hooks_import
    specs = native_specs(config.hooks)
    if imports.azure is not None:
        specs += azure_specs(imports.azure)
    if imports.gcp is not None:
        specs += gcp_specs(imports.gcp, disks=",".join(config.volumes))
    if imports.qemu_ga is not None:
        specs += qemu_ga_specs(imports.qemu_ga)
    return specs
