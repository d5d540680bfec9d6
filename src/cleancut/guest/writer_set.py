"""The writers of one host for one cut: each database's step results, kept per database.

A failing writer is recorded, not raised: the database's volume drops a level (or the
cut aborts, by the application's policy), and every other writer carries on. ``close``
ends every hold on every path; ``abort`` ends them from the watchdog's thread, and no
hold starts after it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleancut.config.guest import Database
from cleancut.errors import CleancutError, ConfigError
from cleancut.writers import Writer, make_writer


@dataclass
class _State:
    writer: Writer[Any]
    volume: str
    kind: str
    ok: bool = True
    error: str | None = None
    held: bool = False
    taking: bool = False  # hold() is running: abort must end a lock still being waited for
    details: dict[str, Any] = field(default_factory=dict)


class WriterSet:
    """The host's writers and what each one did so far."""

    def __init__(self, databases: dict[str, Database], cut_id: str | None = None) -> None:
        self._states = {
            name: _State(make_writer(name, db), db.volume, db.kind)
            for name, db in databases.items()
        }
        for state in self._states.values():
            state.writer.cut_id = cut_id
        self._lock = threading.Lock()
        self._aborted: str | None = None

    def __bool__(self) -> bool:
        return bool(self._states)

    def check(self, volumes: dict[str, Path]) -> dict[str, Any]:
        """What hello reports per database (kind, volume, version, mode, where its files
        are); refuses a database whose files lie outside the volumes of this host."""
        report = {}
        for name, state in self._states.items():
            found = state.writer.check()
            inside = _inside_volumes(name, state.volume, state.writer.locations(), volumes)
            state.details["files"] = inside
            report[name] = {"kind": state.kind, "volume": state.volume, **found, "files": inside}
        return report

    def names(self) -> list[tuple[str, str]]:
        return [(name, s.kind) for name, s in self._states.items()]

    def prepare(self) -> None:
        self._each(lambda w: w.prepare())

    def hold(self, seconds: Callable[[], float], on_first: Callable[[bool], object]) -> None:
        """Each writer takes its hold for at most the deadline's ``seconds()`` left;
        ``on_first`` runs just before each hold (the deadline starts at the first), told
        whether that hold blocks the application's writes (the write stall starts there)."""
        for state in self._states.values():
            with self._lock:
                if self._aborted is not None:
                    if state.ok:
                        state.ok, state.error = False, f"not held: {self._aborted}"
                    continue
                if not state.ok:
                    continue
                on_first(state.writer.blocks_writes)
                state.taking = True
            try:
                state.writer.hold(seconds())
            except CleancutError as exc:
                state.ok, state.error = False, exc.message
                continue
            finally:
                with self._lock:
                    state.taking = False
            with self._lock:
                state.held = True
                if self._aborted is not None:  # the watchdog ended the holds meanwhile
                    state.writer.abort()

    def release(self, on_unblocked: Callable[[], object] = lambda: None) -> None:
        """End every hold, recording each database's position; a hold that ended early
        (deadline, killed holder) makes its writer fail. The holds that block writes end
        first; ``on_unblocked`` runs once they have (the write stall ends there)."""
        ordered = sorted(self._states.values(), key=lambda st: not st.writer.blocks_writes)
        unblocked = False
        for state in ordered:
            if not unblocked and not state.writer.blocks_writes:
                on_unblocked()
                unblocked = True
            if not state.held:
                continue
            state.held = False
            try:
                state.details.update(state.writer.release())
            except CleancutError as exc:
                state.ok, state.error = False, exc.message
        if not unblocked:
            on_unblocked()

    def abort(self, reason: str) -> None:
        """End every hold now (the deadline passed, the coordinator is gone); no new hold
        starts after this. Callable from any thread; never raises."""
        with self._lock:
            self._aborted = reason
            holding = [s for s in self._states.values() if s.held or s.taking]
        for state in holding:
            state.writer.abort()

    def _each(self, step: Callable[[Writer[Any]], Any]) -> None:
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


def _inside_volumes(
    name: str, volume: str, locations: dict[str, Path], volumes: dict[str, Path]
) -> dict[str, dict[str, str]]:
    """Each location as ``{"volume": V, "path": relative}``; a ConfigError for one that no
    volume holds (its files would be missing from the cut) or, for the database's own
    data, one outside its declared ``volume``."""
    placed: dict[str, dict[str, str]] = {}
    for label, location in locations.items():
        real = Path(os.path.realpath(location))
        holder = _holding_volume(real, volumes)
        if holder is None:
            known = ", ".join(f"{v} ({p})" for v, p in sorted(volumes.items())) or "none"
            raise ConfigError(
                f"databases.{name}: its {label} {real} lies in no volume of this host "
                f"(volumes: {known}); a snapshot would miss it. Declare a [volumes.NAME] "
                f"whose path holds {real}, or move the {label} into volume {volume!r}"
            )
        vol, rel = holder
        if label in ("database file", "data directory") and vol != volume:
            raise ConfigError(
                f"databases.{name}.volume: its {label} {real} is in volume {vol!r}, not "
                f"{volume!r}; set volume = {vol!r}"
            )
        placed[label] = {"volume": vol, "path": rel}
    return placed


def _holding_volume(path: Path, volumes: dict[str, Path]) -> tuple[str, str] | None:
    """The volume whose path holds ``path`` (the deepest one) and the path inside it."""
    best: tuple[str, Path] | None = None
    for vol, root in volumes.items():
        real_root = Path(os.path.realpath(root))
        inside = path == real_root or path.is_relative_to(real_root)
        if inside and (best is None or len(real_root.parts) > len(best[1].parts)):
            best = (vol, real_root)
    if best is None:
        return None
    return best[0], str(path.relative_to(best[1]))
