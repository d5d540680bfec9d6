"""Telling people: Apprise notifications and Healthchecks-style pings.

Apprise (the library borgmatic uses) speaks to ntfy, e-mail, Slack, Matrix, plain JSON
webhooks and a hundred more from one URL each, so cleancut writes no client per
service. Each URL is sent on its own, so a failure names the service that failed; the
URL's secrets (tokens, passwords) never appear in a message, only its scheme and host.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Literal

from cleancut.errors import CleancutError

Ping = Literal["start", "success", "fail"]


class NotifyError(CleancutError):
    """A notification or ping could not be delivered."""


def redacted(url: str) -> str:
    """``scheme://host`` of ``url``: enough to say which service, nothing secret."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" if host else f"{parts.scheme}://"


def send(urls: Sequence[str], title: str, body: str, *, kind: str, timeout: float) -> list[str]:
    """Send ``title``/``body`` to every Apprise URL; one problem text per URL that failed.

    ``kind`` is Apprise's notification type (``info``, ``success``, ``warning``,
    ``failure``), which services show as a colour or an icon.
    """
    import apprise  # a heavy import, paid only when there is something to send

    problems = []
    for url in urls:
        notifier = apprise.Apprise()
        if not notifier.add(url):
            problems.append(f"{redacted(url)}: Apprise does not understand this URL")
            continue
        result = notifier.notify(body=body, title=title, notify_type=kind, timeout=timeout)
        if not result:
            messages = [str(entry.message) for entry in result.logs()]
            why = messages[-1] if messages else "delivery failed"
            problems.append(f"{redacted(url)}: {why}")
    return problems


def ping(url: str, kind: Ping, body: str, *, timeout: float) -> None:
    """A Healthchecks ping: ``URL/start`` when a run starts, ``URL`` when it succeeded,
    ``URL/fail`` when it did not; the body (the run's summary) shows in the check's log."""
    target = url.rstrip("/") + {"start": "/start", "success": "", "fail": "/fail"}[kind]
    request = urllib.request.Request(
        target,
        data=body.encode()[:100_000],  # Healthchecks keeps the first 100 kB of a body
        method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "cleancut"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise NotifyError(
            f"the {kind} ping to {redacted(url)} was refused: HTTP {exc.code}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotifyError(f"the {kind} ping to {redacted(url)} failed: {reason}") from exc
