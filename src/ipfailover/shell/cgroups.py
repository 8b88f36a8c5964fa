"""One cgroup (v2) per script run, so that a timeout kills everything the script started.

A process group is not enough: a child that calls ``setsid`` leaves it, and ``killpg`` no longer
reaches it. A cgroup cannot be left that way. When the host has a writable cgroup v2 hierarchy (the
unified mount of a hybrid host counts), each program :func:`ipfailover.shell.scripts.run_program`
starts is created inside a fresh child of the daemon's own cgroup, ``<own
cgroup>/ipfailover-<pid>-<n>``:

* **start:** the daemon moves itself into the new cgroup, forks the program, and moves itself
  back, with nothing else run by the event loop in between (:func:`spawn_inside`). The program is
  in the cgroup from its first instruction, so not even a fork right after ``exec`` escapes. The
  run is checked afterwards (``/proc/<pid>/cgroup``);
* **timeout:** ``cgroup.kill`` (Linux 5.14 and later) SIGKILLs every process in the cgroup at
  once; on older kernels each listed process is SIGKILLed until none is left (bounded);
* **normal exit:** what the program left running on purpose (``daemon &``, a service started by
  a PostAcq script) is moved back to the daemon's cgroup and keeps running, as before;
* the cgroup is removed at the end.

Without a usable cgroup v2 (none mounted, read-only, not root), :meth:`ScriptGroup.create`
returns None and the caller falls back to the process group: then a child that calls
``setsid`` survives a timeout. That is logged once (``script-cgroup-unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from ipfailover.shell import runtime as daemon

log = logging.getLogger("ipfailover.hooks")
T = TypeVar("T")

PREFIX = "ipfailover-"
KILL_ROUNDS = 50  # rounds of SIGKILL per listed process on kernels without cgroup.kill
EMPTY_WAIT = 5.0  # seconds to wait for a killed cgroup to empty before giving up on removing it

_counter = itertools.count(1)
_base: Path | bool | None = False  # False: not looked up yet; None: no usable cgroup v2
_warned = False


def _cgroup2_mount() -> tuple[Path, str] | None:
    """(mount point, root within the hierarchy) of the first cgroup2 mount, if any."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if rest and rest[0] == "cgroup2" and len(fields) >= 5:
            return Path(fields[4].replace("\\040", " ")), fields[3]
    return None


def own_cgroup() -> Path | None:
    """The directory of this process's cgroup v2, or None (no cgroup v2 mounted)."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    point, root = mount
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            entries = f.read().splitlines()
    except OSError:
        return None
    for entry in entries:
        if entry.startswith("0::"):
            path = entry[3:].removesuffix(" (deleted)")
            if root != "/" and path.startswith(root):
                path = path[len(root) :]
            return point / path.lstrip("/")
    return None


def base() -> Path | None:
    """Where script cgroups are created (the daemon's own cgroup), or None: not available."""
    global _base
    if _base is False:
        found = own_cgroup()
        if found is not None and found.name.startswith(PREFIX):
            found = found.parent  # we were left inside one of ours: never nest, never kill self
        usable = found is not None and os.access(found / "cgroup.procs", os.W_OK)
        _base = found if usable else None
    return _base if isinstance(_base, Path) else None


def _warn_once(why: object) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            daemon.format_event(
                "script-cgroup-unavailable",
                why=why,
                effect="scripts run in their own process group only; a child that calls "
                "setsid survives a timeout",
            )
        )


class ScriptGroup:
    """The cgroup of one program run; see the module docstring."""

    def __init__(self, path: Path, parent: Path) -> None:
        self.path = path
        self.parent = parent
        self._entered = False

    @classmethod
    def create(cls) -> ScriptGroup | None:
        parent = base()
        if parent is None:
            _warn_once("no writable cgroup v2 hierarchy")
            return None
        path = parent / f"{PREFIX}{os.getpid()}-{next(_counter)}"
        try:
            path.mkdir()
        except OSError as e:
            _warn_once(f"cannot create {path}: {e.strerror or e}")
            return None
        return cls(path, parent)

    # Moving the daemon in and out around the fork ----------------------------------------------

    def _move_self(self, into: Path) -> bool:
        try:
            (into / "cgroup.procs").write_text("0")  # "0": the writing process
        except OSError as e:
            log.error(daemon.format_event("script-cgroup-error", cgroup=into, error=e))
            return False
        return True

    def enter(self) -> None:
        self._entered = self._move_self(self.path)

    def leave(self) -> None:
        if self._entered:
            self._entered = not self._move_self(self.parent)

    # Ending ------------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (never this daemon: it is not in it)."""
        if self._entered:  # could not move back out: killing the cgroup would kill us
            return
        try:
            (self.path / "cgroup.kill").write_text("1")
            return
        except FileNotFoundError:
            pass  # before Linux 5.14
        except OSError as e:
            log.error(daemon.format_event("script-cgroup-error", cgroup=self.path, error=e))
        me = os.getpid()
        for _ in range(KILL_ROUNDS):
            pids = [p for p in self.pids() if p != me]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def release(self) -> None:
        """Move what is still running back to the daemon's cgroup (it keeps running)."""
        for _ in range(KILL_ROUNDS):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    (self.parent / "cgroup.procs").write_text(str(pid))

    async def close(self, *, kill: bool) -> None:
        """Kill (or release) what is left, wait (bounded) until the cgroup is empty, remove it."""
        self.leave()
        if kill:
            self.kill()
        else:
            self.release()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EMPTY_WAIT
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:  # EBUSY: killed processes still exiting
                if loop.time() > deadline:
                    log.error(daemon.format_event("script-cgroup-error", cgroup=self.path, error=e))
                    return
            await asyncio.sleep(0.01)


async def spawn_inside(group: ScriptGroup | None, start: Callable[[], Awaitable[T]]) -> T:
    """Await ``start()`` (which forks a program) with the daemon inside ``group`` for the fork.

    asyncio forks synchronously in the first step of the task that starts a subprocess. The
    move in, that step and the move out are queued back to back, so the event loop runs nothing
    else while the daemon is inside: no other program can be forked into the wrong cgroup.
    """
    if group is None:
        return await start()

    async def call() -> T:
        return await start()

    loop = asyncio.get_running_loop()
    loop.call_soon(group.enter)
    task = loop.create_task(call())
    loop.call_soon(group.leave)
    return await task
