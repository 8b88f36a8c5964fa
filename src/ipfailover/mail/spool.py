"""The spool (``FAILOVER_SPOOL_DIR``): one JSON file per undelivered message, written atomically.

Each :class:`SpoolItem` is written with write, fsync, rename, fsync the folder, so a crash
leaves either the old or the new content. A delivery holds an flock on the item
(:meth:`Spool.claim`), so two processes never send it twice; the retry schedule is kept in the
item's file, so it survives restarts. Every operation here blocks (open, flock, fsync): the
outbox calls them off the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ipfailover.shell import control
from ipfailover.shell import runtime as daemon

log = logging.getLogger("ipfailover.mail")
SPOOL_VERSION = 1


@dataclass(frozen=True)
class SpoolItem:
    """One message waiting for delivery: the file's content, plus its file name as ``id``."""

    id: str
    created: float  # wall clock
    event: str
    direction: str
    ips: tuple[str, ...]
    recipients: tuple[str, ...]
    sender: str
    subject: str
    message: str  # the whole RFC 5322 message, CRLF line endings
    attempts: int = 0
    next_attempt: float = 0.0  # wall clock; persisted so a restart keeps the backoff
    last_error: str | None = None

    def to_json(self) -> str:
        return json.dumps({"version": SPOOL_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, name: str, text: str) -> SpoolItem:
        data: dict[str, Any] = json.loads(text)
        if data.pop("version", None) != SPOOL_VERSION:
            raise ValueError("unknown spool format version")
        data["id"] = name
        for key in ("ips", "recipients"):
            data[key] = tuple(data[key])
        return cls(**data)


class Spool:
    """A folder of ``<time>-<random>.json`` files, one per undelivered message.

    Every write is atomic (a temporary file renamed into place, both fsynced), so a crash leaves
    either the old or the new content, never half a message. A file that cannot be parsed is
    renamed to ``*.bad`` (kept for the admin) and logged.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        """Create the folder (0700) if need be; refuse one that is not ours alone."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = control.private_dir_problem(self.path)
        if problem is not None:
            raise control.UnsafeDirectory(f"spool {problem}")

    def new_id(self, now: float) -> str:
        return f"{int(now * 1e9):020d}-{secrets.token_hex(4)}.json"

    def write(self, item: SpoolItem) -> None:
        self.ensure()
        tmp = self.path / f".tmp-{item.id}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(item.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / item.id)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ids(self) -> list[str]:
        """The waiting items' names, oldest first."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))

    def read(self, name: str) -> SpoolItem | None:
        """The item, or None if it is gone (delivered meanwhile) or unreadable (set aside)."""
        fd = self._open(name)
        if fd is None:
            return None
        with open(fd, encoding="utf-8") as f:
            text = f.read()
        return self.parse(name, text)

    def parse(self, name: str, text: str) -> SpoolItem | None:
        """The item in ``text``; None if it cannot be parsed (the file is then set aside)."""
        try:
            return SpoolItem.from_json(name, text)
        except (ValueError, TypeError, KeyError) as e:
            with contextlib.suppress(OSError):
                os.replace(self.path / name, self.path / f"{name}.bad")
            log.error(daemon.format_event("mail-spool-bad", file=name, error=e))
            return None

    def claim(self, name: str) -> tuple[int, SpoolItem] | None:
        """Lock one item for delivery and read it: (the fd holding the flock, the item).

        None if another process holds it, or it is gone or unreadable. The caller closes the fd,
        which drops the lock. Blocking (open, flock, read): call it off the event loop.
        """
        fd = self._open(name)
        if fd is None:
            return None
        try:
            item = self._read_locked(fd, name)
        except BaseException:
            os.close(fd)
            raise
        if item is None:
            os.close(fd)
            return None
        return fd, item

    def _open(self, name: str) -> int | None:
        """Open item ``name`` for reading; None if it is gone, or is a symbolic link.

        O_NOFOLLOW: a link planted in the spool (pointing at a file of someone's choosing) is
        never followed; it is set aside as ``*.bad`` and logged, like an unreadable item.
        """
        try:
            return os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
        with contextlib.suppress(OSError):
            os.replace(self.path / name, self.path / f"{name}.bad")
        log.error(daemon.format_event("mail-spool-bad", file=name, error="a symbolic link"))
        return None

    def _read_locked(self, fd: int, name: str) -> SpoolItem | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another process is delivering it
        st = os.fstat(fd)
        if st.st_nlink == 0:
            return None  # delivered (removed) or replaced while we opened it
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"spool item {name} is not a regular file")
        with open(fd, encoding="utf-8", closefd=False) as f:
            return self.parse(name, f.read())

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / name).unlink()
        self._sync_dir()
