"""failoverd's claim on its addresses: an flock in FAILOVER_RUN_DIR that ``ipfailover process``
reads to keep off them."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from ipfailover.failover.record import plain
from ipfailover.shell import control, netif

LOCK_NAME = "failoverd.lock"  # in FAILOVER_RUN_DIR: failoverd's claim on its addresses


class LockHeld(Exception):
    """Another process holds failoverd's lock (``pid`` and the addresses it manages)."""

    def __init__(self, path: Path, pid: int | None, addresses: list[str]) -> None:
        super().__init__(path, pid, addresses)
        self.path = path
        self.pid = pid
        self.addresses = addresses


class ManagerLock:
    """An flock on ``<FAILOVER_RUN_DIR>/failoverd.lock``, held for failoverd's lifetime.

    The file says which process manages which addresses, so ``ipfailover process`` can refuse to
    touch them. The kernel drops the lock when the process dies, however it dies, so a stale file
    never blocks anyone.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def take(cls, run_dir: str, addresses: Iterable[netif.Assignment]) -> ManagerLock:
        """Take the lock and write our pid and addresses; LockHeld if someone has it."""
        path = control.make_run_dir(run_dir) / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.read(fd, 65536).decode("utf-8", "replace")
            os.close(fd)
            raise LockHeld(path, *_parse_lock(content)) from None
        lock = cls(fd, path)
        lock.update(addresses)
        return lock

    def update(self, addresses: Iterable[netif.Assignment]) -> None:
        """Rewrite the addresses we manage (after a reload changed them)."""
        text = f"pid {os.getpid()}\n" + "".join(f"address {plain(a)}\n" for a in addresses)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _parse_lock(text: str) -> tuple[int | None, list[str]]:
    pid, addresses = None, []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "pid" and value.isdigit():
            pid = int(value)
        elif key == "address":
            addresses.append(value)
    return pid, addresses


def manager(run_dir: str) -> LockHeld | None:
    """Who manages addresses here: a LockHeld describing the running failoverd, or None."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockHeld(path, *_parse_lock(os.read(fd, 65536).decode("utf-8", "replace")))
        return None  # nobody holds it: the file is left over from a failoverd that stopped
    finally:
        os.close(fd)


def overlap(held: LockHeld, wanted: Iterable[netif.Assignment]) -> list[str]:
    """The addresses of ``wanted`` that the lock holder manages (compared by IP address)."""
    managed = set()
    for entry in held.addresses:
        with contextlib.suppress(ValueError):
            managed.add(ipaddress.ip_address(entry.split(":", 1)[1].rsplit("/", 1)[0]))
    return [str(a.address) for a in wanted if a.address in managed]
