"""Where the metrics go: node_exporter's textfile collector and a Prometheus pushgateway."""

from __future__ import annotations

import contextlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cleancut.errors import CleancutError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PublishError(CleancutError):
    """The metrics could not be written or pushed."""


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a temporary file in the same folder,
    synced, then renamed over it, so the collector never reads half a file.

    The temporary name starts with a dot and does not end in ``.prom``, so the textfile
    collector skips it while it is being written. The file is world-readable (0644), as
    node_exporter usually runs as its own user.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PublishError(f"cannot write the metrics file {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise PublishError(f"cannot write the metrics file {path}: {exc.strerror}") from exc


def push(gateway: str, app: str, text: str, *, timeout: float) -> None:
    """PUT the metrics to the pushgateway's group ``job="cleancut", app=APP``: the group
    is replaced whole, so a metric the app no longer has does not linger."""
    url = gateway.rstrip("/") + "/metrics/job/cleancut/app/" + urllib.parse.quote(app, safe="")
    request = urllib.request.Request(
        url, data=text.encode(), method="PUT", headers={"Content-Type": CONTENT_TYPE}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()[:300]
        raise PublishError(
            f"the pushgateway {gateway} refused the metrics: HTTP {exc.code} {body}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PublishError(f"cannot reach the pushgateway {gateway}: {reason}") from exc
