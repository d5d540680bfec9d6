"""The writers of one host for one cut: each database's step results, kept per database.

A failing writer is recorded, not raised: the database's volume drops a level (or the
cut aborts, by the application's policy), and every other writer carries on. ``close``
ends every hold on every path; ``abort`` ends them from the watchdog's thread, and no
hold starts after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cleancut.config.guest import Database
from cleancut.errors import CleancutError
from cleancut.writers import Writer, make_writer


@dataclass
class _State:
    writer: Writer
    volume: str
    kind: str
    ok: bool = True
    error: str | None = None
    held: bool = False
    details: dict[str, Any] = field(default_factory=dict)


class WriterSet:
    """The host's writers and what each one did so far."""

    def __init__(self, databases: dict[str, Database]) -> None:
        self._states = {
            name: _State(make_writer(name, db), db.volume, db.kind)
            for name, db in databases.items()
        }
        self._lock = threading.Lock()
        self._aborted: str | None = None

    def __bool__(self) -> bool:
        return bool(self._states)

    def check(self) -> dict[str, Any]:
        """What hello reports per database (kind, volume, version, mode)."""
        return {
            name: {"kind": s.kind, "volume": s.volume, **s.writer.check()}
            for name, s in self._states.items()
        }

    def names(self) -> list[tuple[str, str]]:
        return [(name, s.kind) for name, s in self._states.items()]

    def prepare(self) -> None:
        self._each(lambda w: w.prepare())

    def hold(self, seconds: Callable[[], float], on_first: Callable[[], object]) -> None:
        """Each writer takes its hold for at most the deadline's ``seconds()`` left;
        ``on_first`` runs just before the first hold (the deadline starts there)."""
        for state in self._states.values():
            with self._lock:
                if self._aborted is not None:
                    if state.ok:
                        state.ok, state.error = False, f"not held: {self._aborted}"
                    continue
                if not state.ok:
                    continue
                on_first()
            try:
                state.writer.hold(seconds())
            except CleancutError as exc:
                state.ok, state.error = False, exc.message
                continue
            with self._lock:
                state.held = True
                if self._aborted is not None:  # the watchdog ended the holds meanwhile
                    state.writer.abort()

    def release(self) -> None:
        """End every hold, recording each database's position; a hold that ended early
        (deadline, killed holder) makes its writer fail."""
        for state in self._states.values():
            if not state.held:
                continue
            state.held = False
            try:
                state.details.update(state.writer.release())
            except CleancutError as exc:
                state.ok, state.error = False, exc.message

    def abort(self, reason: str) -> None:
        """End every hold now (the deadline passed, the coordinator is gone); no new hold
        starts after this. Callable from any thread; never raises."""
        with self._lock:
            self._aborted = reason
            holding = [s for s in self._states.values() if s.held]
        for state in holding:
            state.writer.abort()

    def _each(self, step: Callable[[Writer], Any]) -> None:
        for state in self._states.values():
            if not state.ok:
                continue  # a failed writer takes no further step
            try:
                result = step(state.writer)
            except CleancutError as exc:
                state.ok, state.error = False, exc.message
                continue
            if isinstance(result, dict):
                state.details.update(result)

    def report(self) -> dict[str, Any]:
        """Per database: kind, volume, ok, error and the recorded details (positions)."""
        return {
            name: {
                "kind": s.kind,
                "volume": s.volume,
                "ok": s.ok,
                "error": s.error,
                "details": s.details,
            }
            for name, s in self._states.items()
        }

    def close(self) -> None:
        for state in self._states.values():
            state.writer.close()
