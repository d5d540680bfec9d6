"""``[schedule]`` and ``[monitoring]``: when an application's actions run, and who hears of it."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator

from cleancut.config.base import Duration, Strict

#: What ``[schedule]`` may time: the four actions an operator runs unattended.
SCHEDULED_ACTIONS = ("backup", "forget", "check", "verify")

#: The characters of a systemd calendar expression (``Mon..Fri *-*-* 02:00:00 Europe/Berlin``).
#: Anything else (a newline above all) could smuggle a directive into the unit file.
_CALENDAR = re.compile(r"^[A-Za-z0-9*:/,.~+_ -]{1,200}$")


def _calendar(value: str) -> str:
    text = value.strip()
    if not _CALENDAR.match(text):
        raise ValueError(
            f"{value!r} is not a calendar expression: use systemd's OnCalendar syntax (e.g. "
            '"*-*-* 02:00", "Mon *-*-* 03:30") or hourly, daily, weekly, monthly'
        )
    return text


Calendar = Annotated[str, AfterValidator(_calendar)]


class Schedule(Strict):
    """``[schedule]``: when each action runs, as systemd ``OnCalendar`` expressions.

    ``cleancut schedule install`` turns it into one systemd timer per action (or a cron
    file); an action left out is not scheduled. The expressions are checked with
    ``systemd-analyze calendar`` when the schedule is installed or shown.
    """

    backup: Calendar | None = None
    forget: Calendar | None = None
    check: Calendar | None = None
    verify: Calendar | None = None
    randomized_delay: Duration | None = None
    #: The units' TimeoutStopSec; by default computed from freeze_timeout and the hooks
    #: of the guest configs on this machine (those of ssh hosts are not known here).
    stop_timeout: Duration | None = None

    def actions(self) -> dict[str, str]:
        """Each scheduled action and its calendar expression, in run order."""
        return {action: when for action in SCHEDULED_ACTIONS if (when := getattr(self, action))}


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]

Outcome = Literal["success", "degraded", "failure"]
DEFAULT_ON: tuple[Outcome, ...] = ("failure", "degraded")


class Monitoring(Strict):
    """``[monitoring]``: what is told, and where, after every backup, forget, check and verify.

    ``prometheus_textfile`` is rewritten atomically (for node_exporter's textfile
    collector) and ``pushgateway`` gets the same metrics; ``notify`` takes Apprise URLs
    and ``healthchecks`` a Healthchecks-style ping URL (``/start``, success, ``/fail``).
    ``on`` says which outcomes notify (the Prometheus figures are written after every run).
    """

    prometheus_textfile: str | None = Field(default=None, min_length=1)
    pushgateway: HttpUrl | None = None
    notify: list[str] = Field(default_factory=list)
    healthchecks: HttpUrl | None = None
    on: list[Outcome] = Field(default_factory=lambda: list(DEFAULT_ON))
    timeout: Duration = 10.0

    @field_validator("notify")
    @classmethod
    def _apprise_urls(cls, value: list[str]) -> list[str]:
        for index, url in enumerate(value):
            if "://" not in url:
                raise ValueError(
                    f"notify[{index}] = {url!r} is not an Apprise URL (scheme://…, e.g. "
                    '"ntfys://ntfy.sh/topic" or "json://host:port/path")'
                )
        return value
