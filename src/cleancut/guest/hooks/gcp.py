"""GCP's guest-flush scripts: ``pre.sh`` and ``post.sh`` in ``/etc/google/snapshots/``.

Google's guest agent runs each with one argument (the disks being snapshotted), a 60 s
timeout and no retries, and fails the snapshot when the pre-script fails; we do the same,
passing the names of the volumes this host declares.
"""

from __future__ import annotations

from pathlib import Path

from cleancut.errors import ConfigError
from cleancut.guest.hooks.spec import HookSpec

GCP_TIMEOUT = 60.0


def gcp_specs(folder: Path, *, disks: str = "") -> list[HookSpec]:
    """The one GCP hook in ``folder`` (either script may be missing, not both)."""
    if not folder.is_dir():
        raise ConfigError(
            "is not a folder",
            file=str(folder),
            key="hooks_import.gcp",
            hint="point it at the folder holding pre.sh and post.sh (/etc/google/snapshots)",
        )
    pre, post = folder / "pre.sh", folder / "post.sh"
    has_pre, has_post = pre.exists() or pre.is_symlink(), post.exists() or post.is_symlink()
    if not (has_pre or has_post):
        raise ConfigError(
            "holds neither pre.sh nor post.sh",
            file=str(folder),
            key="hooks_import.gcp",
            hint="add the scripts or remove hooks_import.gcp",
        )
    return [
        HookSpec(
            name="gcp",
            source="gcp",
            pre=[str(pre), disks] if has_pre else None,
            post=[str(post), disks] if has_post else None,
            timeout=GCP_TIMEOUT,
            continue_on_failure=False,
            details={"folder": str(folder)},
        )
    ]
