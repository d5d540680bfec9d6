"""The shop's quiesce control client: what its pre- and post-hooks run.

``python -m cleancut.demo.control pause --socket PATH`` asks the load generator to finish
the order in flight and stop writing, and exits 0 only once it answered ``paused`` (exit 1
with a message on stderr otherwise, e.g. on timeout). ``resume`` lets it write again.
``status`` prints the generator's JSON status. Kept free of heavy imports: hooks start it.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

from cleancut.errors import HookError

_RETRYABLE = (FileNotFoundError, ConnectionRefusedError)


def send(sock_path: Path, command: str, *, timeout: float = 10.0) -> str:
    """Send one command line to the generator at ``sock_path`` and return its one-line answer.

    Connecting is retried until ``timeout`` while the socket is missing or refuses (the
    generator may still be starting); raises :class:`HookError` naming the socket otherwise.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(max(deadline - time.monotonic(), 0.01))
                conn.connect(str(sock_path))
                conn.sendall(f"{command}\n".encode())
                answer = conn.makefile("r", encoding="utf-8").readline().strip()
        except _RETRYABLE as exc:
            if time.monotonic() >= deadline:
                raise HookError(
                    f"{sock_path}: no shop load generator listening ({exc.strerror}); "
                    "is it running with --socket pointing here?"
                ) from exc
            time.sleep(0.05)
            continue
        except TimeoutError as exc:
            raise HookError(
                f"{sock_path}: no answer to {command!r} within {timeout:g} s; the shop may be "
                "stuck (a frozen file system or a held database lock); raise --timeout"
            ) from exc
        except OSError as exc:
            raise HookError(f"{sock_path}: {command!r} failed: {exc}") from exc
        if not answer:
            raise HookError(f"{sock_path}: the generator closed the connection on {command!r}")
        return answer


def _expect(sock_path: Path, command: str, wanted: str, timeout: float) -> None:
    answer = send(sock_path, command, timeout=timeout)
    if answer != wanted:
        raise HookError(f"{sock_path}: {command!r} answered {answer!r}, expected {wanted!r}")


def pause(sock_path: Path, *, timeout: float = 10.0) -> None:
    """Return once the shop finished its order in flight and stopped writing."""
    _expect(sock_path, "pause", "paused", timeout)


def resume(sock_path: Path, *, timeout: float = 10.0) -> None:
    """Return once the shop writes again."""
    _expect(sock_path, "resume", "resumed", timeout)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``pause|resume|status --socket PATH [--timeout S]``; 0 on success, else 1."""
    parser = argparse.ArgumentParser(prog="python -m cleancut.demo.control", description=__doc__)
    parser.add_argument("command", choices=["pause", "resume", "status"])
    parser.add_argument("--socket", type=Path, required=True, help="the generator's socket")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pause":
            pause(args.socket, timeout=args.timeout)
            print("paused")
        elif args.command == "resume":
            resume(args.socket, timeout=args.timeout)
            print("resumed")
        else:
            print(send(args.socket, "status", timeout=args.timeout))
    except HookError as exc:
        print(f"cleancut.demo.control: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
