"""The shop's load generator: correlated orders, invoices and receipts, with a quiesce control.

Run as ``python -m cleancut.demo.load --orders-db ... --invoices-db ... --receipts-dir ...
--socket PATH``; each database is a SQLite file or a server URI (:mod:`cleancut.demo.shopdb`).
One writer thread writes order after order, each in three steps that are each their own
commit, as real applications do:

1. INSERT the order into the orders database and commit;
2. INSERT its invoice ``(order_id, amount)`` into the invoices database and commit;
3. write ``receipts/<order_id>.txt`` (to a temporary name in the same folder, then rename).

A backup that takes the three resources at different moments therefore sees orders without
their invoice or receipt, or invoices and receipts without their order.

The quiesce control listens on a unix socket (one line in, one line out):

* ``pause``  → the writer finishes the order in flight (all three steps), stops writing, and
  only then is ``paused`` answered. The pause holds after the client disconnects; if no
  ``resume`` comes within ``--auto-resume`` seconds the writer resumes by itself (and says
  so on stderr), so a lost post-hook cannot stop the shop for good.
* ``resume`` → writing continues; answers ``resumed``.
* ``status`` → a JSON object: orders written, paused or not.

SIGTERM (or SIGINT) ends the generator after the order in flight, so a stopped shop is
complete; it then prints its statistics as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cleancut.demo.shop import receipt_name
from cleancut.demo.shopdb import ShopDb, ShopTargets, open_db

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_SUN_PATH_MAX = 107


@dataclass
class _State:
    """What the writer and the control connections share, guarded by ``cond``."""

    auto_resume: float
    cond: threading.Condition = field(default_factory=threading.Condition)
    stop: bool = False
    pause_requested: bool = False
    pause_seq: int = 0
    paused: bool = False
    orders: int = 0
    pauses: int = 0
    auto_resumes: int = 0
    error: str | None = None


class _Writer:
    """Writes correlated records until told to stop; honours pause requests between orders."""

    def __init__(self, shop: ShopTargets, state: _State, step_delay: float, busy: float) -> None:
        self.shop = shop
        self.state = state
        self.step_delay = step_delay
        self.busy = busy

    def run(self) -> None:
        """Thread body: one order after another; any failure is recorded for the exit status."""
        try:
            with (
                open_db(self.shop.orders, busy_timeout=self.busy) as orders,
                open_db(self.shop.invoices, busy_timeout=self.busy) as invoices,
            ):
                while self._wait_while_paused():
                    self._write_order(orders, invoices)
        except Exception as exc:  # any driver's error: recorded, it ends the run
            with self.state.cond:
                self.state.error = f"{type(exc).__name__}: {exc}"
                self.state.stop = True
                self.state.cond.notify_all()

    def _wait_while_paused(self) -> bool:
        """Between orders: stay paused while asked (or until the safety limit); False = stop."""
        st = self.state
        with st.cond:
            seen_seq = -1
            deadline = 0.0
            while st.pause_requested and not st.stop:
                if st.pause_seq != seen_seq:  # a new pause restarts the safety window
                    seen_seq = st.pause_seq
                    deadline = time.monotonic() + st.auto_resume
                    if not st.paused:
                        st.paused = True
                        st.pauses += 1
                        st.cond.notify_all()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    st.pause_requested = False
                    st.auto_resumes += 1
                    print(
                        f"cleancut.demo.load: no resume within {st.auto_resume:g} s of the pause; "
                        "resumed by itself (safety limit, --auto-resume)",
                        file=sys.stderr,
                        flush=True,
                    )
                    break
                st.cond.wait(remaining)
            st.paused = False
            st.cond.notify_all()
            return not st.stop

    def _write_order(self, orders: ShopDb, invoices: ShopDb) -> None:
        """The three steps of one order, each its own commit."""
        amount = 100 + (self.state.orders * 37) % 9900
        order_id = orders.add_order(f"customer-{self.state.orders % 97}", amount)
        self._pause_between_steps()
        invoices.add_invoice(order_id, amount)
        self._pause_between_steps()
        final = self.shop.receipts_dir / receipt_name(order_id)
        temp = self.shop.receipts_dir / f".{final.name}.tmp"
        temp.write_text(f"order {order_id}\namount_cents {amount}\n", encoding="ascii")
        temp.rename(final)
        with self.state.cond:
            self.state.orders += 1
        self._pause_between_steps()

    def _pause_between_steps(self) -> None:
        if self.step_delay > 0:
            time.sleep(self.step_delay)


class _ControlServer:
    """The unix-socket quiesce control; one short-lived thread per connection."""

    def __init__(self, path: Path, state: _State, pause_timeout: float = 60.0) -> None:
        self.path = path
        self.state = state
        self.pause_timeout = pause_timeout
        if path.is_socket():
            path.unlink()  # a stale socket from an earlier run
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)

    def serve(self) -> None:
        """Thread body: accept until the generator stops."""
        while True:
            with self.state.cond:
                if self.state.stop:
                    return
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def close(self) -> None:
        """Close the listening socket and remove its file."""
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10.0)
            try:
                command = conn.makefile("r", encoding="utf-8").readline().strip()
                conn.sendall((self._answer(command) + "\n").encode())
            except OSError:
                return  # the client went away; a pause it asked for still holds

    def _answer(self, command: str) -> str:
        st = self.state
        with st.cond:
            if command == "pause":
                st.pause_requested = True
                st.pause_seq += 1
                st.cond.notify_all()
                st.cond.wait_for(
                    lambda: st.paused or st.stop or not st.pause_requested, self.pause_timeout
                )
                return "paused" if st.paused else "error: the writer did not pause"
            if command == "resume":
                st.pause_requested = False
                st.cond.notify_all()
                return "resumed"
            if command == "status":
                return json.dumps({"orders": st.orders, "paused": st.paused, "error": st.error})
        return f"error: unknown command {command!r} (expected pause, resume or status)"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cleancut.demo.load", description=__doc__)
    p.add_argument("--orders-db", required=True, help="orders database: file or URI (schema made)")
    p.add_argument("--invoices-db", required=True, help="invoices database: file or URI")
    p.add_argument("--receipts-dir", type=Path, required=True, help="the receipts folder")
    p.add_argument("--socket", type=Path, required=True, help="quiesce control socket path")
    p.add_argument("--step-delay", type=float, default=0.002, help="seconds between steps")
    p.add_argument("--auto-resume", type=float, default=60.0, help="pause safety limit, s")
    p.add_argument("--busy-timeout", type=float, default=60.0, help="lock wait timeout, s")
    args = p.parse_args(argv)
    if len(os.fsencode(args.socket.absolute())) > _SUN_PATH_MAX:
        p.error(
            f"--socket {args.socket}: path longer than {_SUN_PATH_MAX} bytes; use a shorter one"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT; print the statistics as a JSON line; 0 unless it failed."""
    args = _parse_args(argv)
    shop = ShopTargets(args.orders_db, args.invoices_db, args.receipts_dir)
    state = _State(auto_resume=args.auto_resume)
    # Block the stop signals before any thread starts (threads inherit the mask), so only the
    # main thread receives them, synchronously, with sigtimedwait: no handler runs in a lock.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        server = _ControlServer(args.socket, state)
    except OSError as exc:
        print(f"cleancut.demo.load: --socket {args.socket}: cannot listen: {exc}", file=sys.stderr)
        return 2
    writer = threading.Thread(
        target=_Writer(shop, state, args.step_delay, args.busy_timeout).run, name="writer"
    )
    control = threading.Thread(target=server.serve, name="control", daemon=True)
    started = time.monotonic()
    writer.start()
    control.start()
    try:
        while writer.is_alive() and signal.sigtimedwait(_STOP_SIGNALS, 0.2) is None:
            pass
    finally:
        with state.cond:
            state.stop = True
            state.cond.notify_all()
        writer.join()
        server.close()
    stats = {
        "orders": state.orders,
        "seconds": round(time.monotonic() - started, 3),
        "pauses": state.pauses,
        "auto_resumes": state.auto_resumes,
        "error": state.error,
    }
    print(json.dumps(stats), flush=True)
    if state.error:
        print(f"cleancut.demo.load: writer failed: {state.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
