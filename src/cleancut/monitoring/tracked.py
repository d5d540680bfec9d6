"""One run of an action, recorded and told: the run log, the metrics, notifications, pings.

Every command that changes or judges the repository (backup, forget, check, verify)
runs inside :class:`TrackedRun`. It records the run before anything happens, so a run
killed outright reads back as interrupted, and afterwards, however the run ended:
records its outcome and summary, rewrites the Prometheus text file and pushes it, pings
Healthchecks and notifies through Apprise when ``[monitoring] on`` names the outcome.
Nothing that goes wrong while telling changes the action's outcome or exit code: it is
said as a warning on stderr and the next run tries again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import click

from cleancut.catalog import Catalog
from cleancut.config.load import LoadedApp
from cleancut.config.operations import Monitoring
from cleancut.errors import CleancutError
from cleancut.monitoring import metrics, notify, publish
from cleancut.monitoring.summaries import describe
from cleancut.runs import Outcome, RunLog, runs_path
from cleancut.signals import StopSignal


class TrackedRun:
    """A context manager around one run of ``action``; call :meth:`done` with the outcome
    and summary before the block ends (an exception or a non-zero exit without it is a
    failure)."""

    def __init__(
        self,
        loaded: LoadedApp,
        action: str,
        catalog: Catalog,
        *,
        warn: Callable[[str], object],
        measure_repository: Callable[[], int] | None = None,
    ) -> None:
        self.app = loaded.config.name
        self.action = action
        self.catalog = catalog
        self.runs = RunLog(runs_path(catalog.path, self.app))
        self.monitoring: Monitoring | None = loaded.config.monitoring
        self.config_dir = loaded.path.parent
        self.warn = warn
        self.measure_repository = measure_repository
        self.outcome: Outcome | None = None
        self.summary: dict[str, Any] = {}
        self.failed_hosts: list[dict[str, str]] = []
        self._run_id = 0

    def done(self, outcome: Outcome, summary: dict[str, Any]) -> None:
        """What the run did; ``degraded`` for a weaker result than asked."""
        self.outcome = outcome
        self.summary = dict(summary)

    def host_failed(self, host: str, phase: str, error: str) -> None:
        """A host failed a phase: named in the summary even when the run goes on."""
        self.failed_hosts.append({"host": host, "phase": phase, "error": error})

    def __enter__(self) -> TrackedRun:
        self._run_id = self.runs.start(self.app, self.action)
        monitoring = self.monitoring
        if monitoring is not None and monitoring.healthchecks:
            self._guard(
                lambda: notify.ping(
                    str(monitoring.healthchecks),
                    "start",
                    f"cleancut {self.action} of {self.app} started",
                    timeout=monitoring.timeout,
                )
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outcome, summary = self._settle(exc)
        if self.failed_hosts:
            summary.setdefault("failed_hosts", self.failed_hosts)
        if self.measure_repository is not None and self.monitoring is not None:
            measure = self.measure_repository

            def measured() -> None:
                summary["repository_size_bytes"] = measure()

            self._guard(measured)
        self._guard(lambda: self.runs.finish(self._run_id, outcome, summary))
        self._tell(outcome, summary)

    # -- what happened ----------------------------------------------------------------

    def _settle(self, exc: BaseException | None) -> tuple[Outcome, dict[str, Any]]:
        summary = dict(self.summary)
        if exc is None:
            return self.outcome or "success", summary
        if isinstance(exc, click.exceptions.Exit) and self.outcome is not None:
            return self.outcome, summary  # the command said how it ended, then its exit code
        if isinstance(exc, click.exceptions.Exit):
            outcome: Outcome = "success" if exc.exit_code == 0 else "failure"
            summary.setdefault("exit_code", exc.exit_code)
            return outcome, summary
        if isinstance(exc, KeyboardInterrupt | StopSignal):
            summary["error"] = "interrupted by a signal"
            return "failure", summary
        if isinstance(exc, CleancutError):
            summary["error"] = exc.message
            summary["exit_code"] = exc.exit_code
            host = getattr(exc, "host", None)
            if isinstance(host, str):
                summary["host"] = host
            return "failure", summary
        summary["error"] = f"{type(exc).__name__}: {exc}"
        return "failure", summary

    # -- telling ------------------------------------------------------------------------

    def _tell(self, outcome: Outcome, summary: dict[str, Any]) -> None:
        monitoring = self.monitoring
        if monitoring is None:
            return
        if monitoring.prometheus_textfile or monitoring.pushgateway:
            text = metrics.render(self.app, self.runs, self.catalog)
            if monitoring.prometheus_textfile:
                path = self._path(monitoring.prometheus_textfile)
                self._guard(lambda: publish.write_textfile(path, text))
            if monitoring.pushgateway:
                gateway = monitoring.pushgateway
                self._guard(
                    lambda: publish.push(gateway, self.app, text, timeout=monitoring.timeout)
                )
        title, body = describe(self.app, self.action, outcome, summary)
        if monitoring.healthchecks:
            kind: notify.Ping = (
                "fail"
                if outcome == "failure" or (outcome == "degraded" and "degraded" in monitoring.on)
                else "success"
            )
            hc = monitoring.healthchecks
            self._guard(
                lambda: notify.ping(hc, kind, f"{title}\n\n{body}", timeout=monitoring.timeout)
            )
        if monitoring.notify and outcome in monitoring.on:
            apprise_kind = {"success": "success", "degraded": "warning"}.get(outcome, "failure")
            for problem in notify.send(
                monitoring.notify, title, body, kind=apprise_kind, timeout=monitoring.timeout
            ):
                self.warn(f"warning: notification not delivered: {problem}")

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.config_dir / path

    def _guard(self, step: Callable[[], object]) -> None:
        """Run a telling step; what goes wrong is a warning, never the run's outcome."""
        try:
            step()
        except CleancutError as exc:
            self.warn(f"warning: {exc.message}")
        except OSError as exc:  # pragma: no cover - the steps map their own OSErrors
            self.warn(f"warning: {exc}")
