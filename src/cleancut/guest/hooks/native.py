"""Native hooks: the ``[[hooks]]`` tables of guest.toml, already validated by the config model."""

from __future__ import annotations

from cleancut.config.guest import Hook
from cleancut.guest.hooks.spec import HookSpec


def native_specs(hooks: list[Hook]) -> list[HookSpec]:
    """One spec per ``[[hooks]]`` entry, in file order; ``retries`` applies to both phases.

    A hook without ``volumes`` quiesces every volume of the host (``volumes=None``).
    """
    return [
        HookSpec(
            name=hook.name,
            source="native",
            pre=list(hook.pre) if hook.pre else None,
            post=list(hook.post) if hook.post else None,
            timeout=hook.timeout,
            pre_retries=hook.retries,
            post_retries=hook.retries,
            pre_sha256=hook.sha256.pre if hook.sha256 else None,
            post_sha256=hook.sha256.post if hook.sha256 else None,
            continue_on_failure=hook.continue_on_failure,
            volumes=tuple(hook.volumes) if hook.volumes is not None else None,
        )
        for hook in hooks
    ]
