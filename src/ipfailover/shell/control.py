"""The control socket: each daemon answers `status` on a root-only Unix socket in its run dir.

Protocol: the client connects, writes one line (a command, e.g. ``status``), and reads one JSON
object followed by a newline; then the server closes. The JSON schema is documented in
``docs/status.md`` and versioned by its ``schema`` field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipfailover.shell import snapshot as shape

SCHEMA = 1
ROLES = ("failoverd", "heartbeatd")
Snapshot = Callable[[], shape.Snapshot]


class UnsafeDirectory(PermissionError):
    """FAILOVER_RUN_DIR or FAILOVER_SPOOL_DIR is not this daemon's alone; the message says why
    and how to fix it."""


def private_dir_problem(path: Path, uid: int | None = None) -> str | None:
    """Why ``path`` is not a private directory of ``uid`` (default: ours), with the fix.

    It must be a real directory (not a symbolic link), owned by the daemon's user and closed to
    group and others (0700): whoever else could write there could plant or swap the control
    socket, the lock file or a spooled message. A missing directory is fine: it is created 0700.
    """
    uid = os.geteuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # not there yet: created 0700 (or reported)
        return None
    except OSError as e:
        return f"{path}: cannot check: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link; point the setting at the directory itself"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid:
        return (
            f"{path} is owned by uid {st.st_uid}, not by uid {uid} that runs the daemon "
            f"(fix: chown {uid} {path} && chmod 700 {path}, or remove it)"
        )
    if st.st_mode & 0o077:
        return (
            f"{path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}) "
            f"(fix: chmod 700 {path})"
        )
    return None


def make_run_dir(run_dir: str | Path) -> Path:
    """FAILOVER_RUN_DIR, created if need be, root's alone (0700): control sockets and locks.

    One that exists but is not ours alone is refused (UnsafeDirectory), not repaired: what
    others may have put in it meanwhile cannot be known.
    """
    path = Path(run_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = private_dir_problem(path)
    if problem is not None:
        raise UnsafeDirectory(f"run directory {problem}")
    return path


def socket_path(run_dir: str, role: str) -> Path:
    return Path(run_dir) / f"{role}.sock"


class ControlServer:
    """Serves snapshots of a daemon's state; the socket is mode 0600 in a 0700 directory."""

    def __init__(self, run_dir: str, role: str, snapshot: Snapshot) -> None:
        self.path = socket_path(run_dir, role)
        self.snapshot = snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        make_run_dir(self.path.parent)
        if self.path.is_socket() and not _answers(self.path):
            self.path.unlink()  # left behind by a process that died
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5.0)
            command = line.decode("ascii", "replace").strip() or "status"
            if command == "status":
                reply: shape.Snapshot | dict[str, Any] = self.snapshot()
            else:
                reply = {"schema": SCHEMA, "error": f"unknown command {command!r}"}
            writer.write(json.dumps(reply, sort_keys=True).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def query(path: Path, command: str = "status", timeout: float = 5.0) -> dict[str, Any]:
    """Ask one daemon; raises OSError if nothing answers there."""
    if not stat.S_ISSOCK(path.stat().st_mode):
        raise OSError(f"{path} is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    return reply


# Boot files: how each daemon knows its own host's datagrams ------------------------------------
#
# A daemon's boot id (random at start-up, in every datagram it sends) is what tells this host's
# datagrams from another machine's that carries the same node name (a cloned host name). Each
# daemon writes its boot id to ``<role>.boot`` in FAILOVER_RUN_DIR before it sends anything and
# removes it when it exits; the other daemon of a peering host reads it when a datagram with our
# name and an unknown boot id arrives (see ipfailover.core.auth.Identity).


def boot_path(run_dir: str | Path, role: str) -> Path:
    return Path(run_dir) / f"{role}.boot"


def write_boot(run_dir: str | Path, role: str, boot: bytes) -> None:
    path = boot_path(make_run_dir(run_dir), role)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(boot.hex() + "\n")
    os.replace(tmp, path)


def remove_boot(run_dir: str | Path, role: str, boot: bytes) -> None:
    """Remove our boot file, unless another process of the same role has replaced it."""
    path = boot_path(run_dir, role)
    with contextlib.suppress(OSError):
        if path.read_text().strip() == boot.hex():
            path.unlink()


def read_boots(run_dir: str | Path) -> frozenset[bytes]:
    """The boot ids of the daemons running on this host (unreadable or bad files are skipped)."""
    out = set()
    for role in ROLES:
        try:
            fd = os.open(boot_path(run_dir, role), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                out.add(bytes.fromhex(f.read(64).strip()))
        except (OSError, ValueError):
            continue
    return frozenset(b for b in out if len(b) == 8)
