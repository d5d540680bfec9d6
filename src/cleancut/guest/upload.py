"""Moving one cut's snapshots into the repository, from the guest, and what that would run.

Each snapshot is uploaded by the mover (restic) straight from the host, tagged with the
application, recovery point, host and resource. The provider that took a snapshot decides
how the mover may compare it with the volume's previous one (restic's parent). An upload
in progress stops at the mover's next progress report once :meth:`Uploads.cancel` is
called: when ``release`` arrives or the coordinator is gone, nobody will commit it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cleancut.errors import HostFailed, MoverError, ProviderError
from cleancut.mover import make_mover
from cleancut.mover.base import RepositoryAccess
from cleancut.protocol import UploadArgs
from cleancut.providers.base import Provider, Snapshot

Emit = Callable[[str, dict[str, Any]], None]


class Uploads:
    """The uploads of one recovery point's snapshots on one host."""

    def __init__(self, rp_id: str, providers: Mapping[str, Provider]) -> None:
        self.rp_id = rp_id
        self.providers = providers
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop an upload in progress at the mover's next progress report (any thread)."""
        self._cancelled.set()

    def tags(self, app: str, host: str, resource: str) -> dict[str, str]:
        return {"cleancut": "", "app": app, "rp": self.rp_id, "host": host, "resource": resource}

    def run(
        self,
        snapshots: Mapping[str, Snapshot],
        args: UploadArgs,
        emit: Emit,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Each snapshot into the repository; per resource what the mover reported.

        ``args.parents`` are the resources' previous snapshots: the mover then skips
        unchanged files. A parent the repository no longer has only costs a full read.
        ``labels`` gives the ``host/volume`` a snapshot belongs to when that is another
        host's (a disk image cloned here): it is tagged as that host's volume.
        """
        mover = make_mover(RepositoryAccess(args.repository.url, args.repository.password))
        uploads: dict[str, Any] = {}
        for name, snap in snapshots.items():

            def progress(figures: dict[str, Any], resource: str = name) -> None:
                if self._cancelled.is_set():  # raising here stops restic (SIGINT)
                    raise HostFailed(f"upload of {resource} cancelled: release was asked for")
                emit("progress", {"resource": resource, **figures})

            owner, _, resource = (labels or {}).get(name, f"{args.host}/{name}").partition("/")
            tags = self.tags(args.app, owner, resource)
            provider = self.providers[name]
            # the provider that took the snapshot knows when restic may skip unchanged files
            options = provider.upload_options(args.parents.get(name))
            try:
                result = mover.backup(
                    snap.path,
                    host=owner,
                    tags=tags,
                    progress=progress,
                    parent=options.parent,
                    ignore_inode=options.ignore_inode,
                    ignore_ctime=options.ignore_ctime,
                )
            except MoverError:
                if options.parent is None:
                    raise  # a parent the repository lost only costs a full read
                result = mover.backup(snap.path, host=owner, tags=tags, progress=progress)
            warning = None
            try:
                provider.uploaded(result.snapshot_id)
            except ProviderError as exc:  # losing the record only costs a full read next time
                warning = exc.message
            uploads[name] = {
                "snapshot_id": result.snapshot_id,
                "bytes_processed": result.bytes_processed,
                "bytes_added": result.bytes_added,
                "files": result.files,
                "files_unmodified": result.files_unmodified,
                "seconds": result.seconds,
                "change_detection": options.reason,
                "record_warning": warning,
            }
        return uploads

    def plan(self, url: str, app: str, host: str, volumes: Mapping[str, Path]) -> list[str]:
        """The upload command of each volume, for the dry run (URL masked, no password)."""
        mover = make_mover(RepositoryAccess(url, ""))
        return [
            f"upload: volume {name}: {mover.preview_backup(path, host, self.tags(app, host, name))}"
            for name, path in volumes.items()
        ]
