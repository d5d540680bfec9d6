"""One exception tree for cleancut; each class carries the exit code ``main()`` turns it into.

::

    CleancutError (1)
    ├── ConfigError (2)              a config file or argument is wrong; nothing was touched
    ├── HookSecurityError (2)        a hook or config file fails the permission checks
    ├── HostUnreachable (5)          the transport could not reach a host's guest agent
    ├── HostRefused (10)             reached, but the SSH handshake failed: key or host key
    ├── HostFailed (6)               a host answered, but a phase failed on it
    │   └── GuestError (6)           the error as the guest reported it
    ├── ProtocolError (6)            the guest and coordinator disagree on the protocol
    ├── FreezeError (6)              FIFREEZE/FITHAW refused
    ├── ProviderError (6)            a snapshot could not be made (e.g. datastore without reflink)
    ├── WriterError (6)              a database could not be made consistent
    ├── HookError (6)                a hook failed, timed out or could not be started
    ├── PolicyAbort (4)              on_failure = "abort" and a member fell below application
    ├── MoverError (7)               restic failed; carries restic's own message
    │   └── ResticInterrupted (130)  restic was stopped by SIGINT (a Ctrl-C that cleancut ignored)
    ├── CatalogError (1)             the local index is unreadable
    ├── NotFound (8)                 no such recovery point / resource
    ├── AlreadyRunning (11)          another backup of the application runs (coordinator.runlock)
    ├── CheckProblems (12)           ``cleancut check`` found damage, missing members, orphans, ...
    ├── Interrupted (130, 143, ...)  Ctrl-C or SIGTERM: every host was released first
    └── RestoreRefused (2)           a restore would overwrite live data without --in-place

A committed but degraded recovery point is not an error: the CLI exits with
:data:`EXIT_DEGRADED` so scripts notice it. A post-script that failed (or whose result
never arrived) may leave its application quiesced: ``backup`` warns and, when the recovery
point was committed, exits with :data:`EXIT_POST_FAILED` (9), ahead of :data:`EXIT_DEGRADED`;
when the cut failed, the error's own code stands.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_DEGRADED = 3
#: A post-script failed: the application may still be quiesced (see the module docstring).
EXIT_POST_FAILED = 9


class CleancutError(Exception):
    """Something went wrong."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(CleancutError):
    """The configuration is invalid."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.hint = hint
        parts = []
        if file:
            parts.append(file)
        if key:
            parts.append(key)
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class HookSecurityError(CleancutError):
    """A hook or configuration file failed a permission check."""

    exit_code = 2

    def __init__(self, path: str, rule: str, fix: str) -> None:
        self.path = path
        self.rule = rule
        self.fix = fix
        super().__init__(f"{path}: refused: {rule}; fix: {fix}")


class HostUnreachable(CleancutError):
    """The host's guest agent could not be reached."""

    exit_code = 5


class HostRefused(CleancutError):
    """The host answered on the network, but SSH could not authenticate either way: the
    host refused the backup key, or its host key is unknown or changed. Retrying will not
    help; the config or the host's authorized_keys/known_hosts must be fixed."""

    exit_code = 10


class HostFailed(CleancutError):
    """A host answered, but a phase failed on it."""

    exit_code = 6


class GuestError(HostFailed):
    """The guest agent reported an error."""

    def __init__(self, host: str, kind: str, message: str) -> None:
        self.host = host
        self.kind = kind
        super().__init__(f"host {host}: {message}")


class ProtocolError(CleancutError):
    """The guest agent and the coordinator disagree on the protocol."""

    exit_code = 6


class FreezeError(CleancutError):
    """A file system could not be frozen or thawed."""

    exit_code = 6


class ProviderError(CleancutError):
    """A snapshot could not be made."""

    exit_code = 6


class WriterError(CleancutError):
    """A database could not be made consistent."""

    exit_code = 6


class HookError(CleancutError):
    """A hook failed."""

    exit_code = 6


class PolicyAbort(CleancutError):
    """on_failure = "abort" and a member did not reach application level; no RP was written."""

    exit_code = 4


class MoverError(CleancutError):
    """The backup repository tool failed."""

    exit_code = 7


class ResticInterrupted(MoverError):
    """restic was stopped by SIGINT.

    A Ctrl-C reaches every process of the terminal's group. cleancut's own handler
    usually wins and the run ends as :class:`Interrupted`; but restic (a Go program)
    takes SIGINT even when it was started with SIGINT ignored (``cleancut backup &`` in a
    script), so the interruption may be known only from restic's exit status. It is an
    interruption all the same, not a restic failure.
    """

    exit_code = 130


class CatalogError(CleancutError):
    """The local catalog could not be read or written."""


class NotFound(CleancutError):
    """The requested recovery point or resource does not exist."""

    exit_code = 8


class CheckProblems(CleancutError):
    """The repository check found problems (each one was reported)."""

    exit_code = 12


class RestoreRefused(CleancutError):
    """The restore would overwrite live data."""

    exit_code = 2


class Interrupted(CleancutError):
    """The command was interrupted (Ctrl-C, SIGTERM); every host was released first."""

    def __init__(self, signum: int, problems: list[str] | None = None) -> None:
        self.signum = signum
        self.problems = list(problems or [])
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        if self.problems:
            released = "released every host, with problems: " + "; ".join(self.problems)
        else:
            released = (
                "every host was released first: file systems thawed, database holds ended, "
                "post-scripts run, local snapshots deleted; no recovery point was written"
            )
        super().__init__(f"interrupted by {name}; {released}")
