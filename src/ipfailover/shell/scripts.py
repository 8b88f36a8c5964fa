"""Transition scripts: find them in the script folder, check them, run them with a timeout.

Apple's failoverd ran ``Test``, ``PreAcq*``, ``PostAcq*``, ``PreRel*`` and ``PostRel*`` from
``/Library/IPFailover/<primary's public IP>/`` and documented little else. This module is the
contract we give them (``docs/scripts.md``):

* a script is an executable regular file whose name is the phase name (``Test``) or starts with
  it (``PreAcq10.StopDIP``); each phase runs in ``ls`` order, a bytewise sort of the names;
* it runs as an argument list, never through a shell string, with stdin ``/dev/null``, the script
  folder as working directory, a clean documented environment, and stdout and stderr captured;
* it runs in its own session (process group) and, where the host has cgroup v2, in its own
  cgroup (:mod:`ipfailover.shell.cgroups`); on timeout everything it started is killed with SIGKILL,
  grandchildren included, and with a cgroup even a child that called ``setsid`` (without one,
  such a child escapes, as from any supervisor that only has process groups);
* as root, and with ``FAILOVER_SCRIPT_STRICT`` on, a script or folder that others could change is
  refused, in the manner of sshd's StrictModes.

:func:`run_program` is the general runner; the notifier uses it for ``FAILOVER_NOTIFY_PROGRAM``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ipfailover.core import config
from ipfailover.shell import cgroups

#: The PATH scripts and the notify program get (their environment is otherwise clean).
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_LIMIT = 64 * 1024  # bytes of a program's output kept; the rest is read and counted
EOF_GRACE = 0.2  # seconds to wait for the output pipe to close after the program exits
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed program to be reaped


class Phase(enum.StrEnum):
    """The kinds of transition script; the value is the name or the name prefix."""

    TEST = "Test"
    PRE_ACQ = "PreAcq"
    POST_ACQ = "PostAcq"
    PRE_REL = "PreRel"
    POST_REL = "PostRel"


class Status(enum.StrEnum):
    """How one script run ended."""

    OK = "ok"  # exit status 0
    FAILED = "failed"  # non-zero exit status or killed by a signal
    TIMEOUT = "timeout"  # still running at the timeout; its process group was killed
    REFUSED = "refused"  # not run: unsafe ownership or permissions (strict mode)
    ERROR = "error"  # could not be started at all (e.g. bad interpreter line)


@dataclass(frozen=True)
class Script:
    """One script found in the folder; ``problem`` says why it must not run (strict mode)."""

    path: Path
    phase: Phase
    problem: str | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file checked

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ProgramResult:
    """What a finished program did; ``error`` is set when it could not be started."""

    exit_code: int | None  # None if it timed out or never started; negative = killed by signal
    timed_out: bool
    output: str  # stdout and stderr interleaved, at most OUTPUT_LIMIT bytes of it
    output_dropped: int  # bytes of output beyond the limit (read and discarded)
    duration: float
    error: str | None = None


@dataclass(frozen=True)
class ScriptResult:
    """One script's run, as reported in the log, the transition record and the mail."""

    name: str
    phase: Phase
    status: Status
    started: float  # loop time when it started (or was refused)
    duration: float
    exit_code: int | None = None
    output: str = ""
    detail: str = ""  # "exit 0", "killed after the 30 s timeout", "refused: ..."

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class HookRunner(Protocol):
    """What the transition executor needs from the script folder (tests plug in fakes)."""

    @property
    def path(self) -> Path: ...

    def scripts(self, phase: Phase) -> list[Script]: ...

    async def run(self, script: Script, env: Mapping[str, str]) -> ScriptResult: ...


# --- safety checks -----------------------------------------------------------------------------


def unsafe(st: os.stat_result, uid: int, *, allow_sticky: bool = False) -> str | None:
    """Why a file or directory with this stat is unsafe to trust, or None.

    It must be owned by root or by ``uid`` (the daemon's user) and not writable by group or
    others. ``allow_sticky`` accepts a group/other-writable directory with the sticky bit (``/tmp``)
    owned by root or ``uid``: there nobody else can rename or remove the entries we own.
    """
    if st.st_uid not in (0, uid):
        return f"owned by uid {st.st_uid}, not root"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky_dir = allow_sticky and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if writable and not sticky_dir:
        who = _WRITERS[writable]
        return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


_WRITERS = {
    stat.S_IWGRP: "group",
    stat.S_IWOTH: "others",
    stat.S_IWGRP | stat.S_IWOTH: "group and others",
}


def folder_problem(folder: Path, uid: int) -> str | None:
    """Why the script folder is unsafe: the folder itself, or any directory above it."""
    try:
        problem = unsafe(folder.stat(), uid)
    except OSError as e:
        return f"cannot check {folder}: {e.strerror}"
    if problem:
        return f"folder {folder} is {problem}"
    for parent in folder.resolve().parents:
        try:
            problem = unsafe(parent.stat(), uid, allow_sticky=True)
        except OSError as e:
            return f"cannot check {parent}: {e.strerror}"
        if problem:
            return f"directory {parent} (above the script folder) is {problem}"
    return None


MAX_LINKS = 40  # symbolic links followed in one path, as the kernel's own limit


class Refused(Exception):
    """A program that must not run: unsafe, or not the file that was checked."""


def fix_hint(path: Path | str) -> str:
    return f"(fix: chown root {path} && chmod go-w {path})"


def chain_problem(path: Path | str, uid: int) -> tuple[str | None, os.stat_result | None]:
    """Why the program at ``path`` cannot be trusted, and the stat of the file it ends at.

    The path is resolved one component at a time, as the kernel would: every directory on the
    way, including those reached through a symbolic link, must pass :func:`unsafe` (with the
    sticky-bit exception of ``/tmp``), every symbolic link followed must be owned by root (or
    ``uid``), and the file it ends at must pass :func:`unsafe`. So a link to a file, or into a
    directory, that someone else could change is refused, whoever owns the link.
    """
    path = Path(path)
    pending = list(path.parts[1:]) if path.is_absolute() else list(path.absolute().parts[1:])
    current = Path("/")
    try:
        st = os.lstat(current)
    except OSError as e:
        return f"cannot check /: {e.strerror}", None
    if problem := unsafe(st, uid, allow_sticky=True):
        return f"directory / (above {path}) is {problem}", None
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        step = current / name
        try:
            st = os.lstat(step)
        except OSError as e:
            return f"cannot check {step}: {e.strerror}", None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return f"{path}: too many symbolic links", None
            if st.st_uid not in (0, uid):
                return f"symbolic link {step} is owned by uid {st.st_uid}, not root", None
            target = os.readlink(step)
            if target.startswith("/"):
                current = Path("/")
            pending = [*Path(target).parts[1 if target.startswith("/") else 0 :], *pending]
            continue
        current = step
        if pending:
            if not stat.S_ISDIR(st.st_mode):
                return f"{step} (on the way to {path}) is not a directory", None
            if problem := unsafe(st, uid, allow_sticky=True):
                return f"directory {step} (above {path}) is {problem} {fix_hint(step)}", None
        elif problem := unsafe(st, uid):
            via = "" if step == path else f" (the target of {path})"
            return f"{step}{via} is {problem} {fix_hint(step)}", st
    return None, st


def identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def open_checked(
    path: Path | str, *, uid: int, strict: bool, expect: tuple[int, int] | None = None
) -> int:
    """Open the program at ``path`` for running (an O_PATH fd) and check it is what was checked.

    ``strict``: unless ``expect`` (the identity found when it was checked) is given, the whole
    chain is checked now (:func:`chain_problem`); the file opened must be that very file, and
    still safe. Raises :class:`Refused`, or OSError if it cannot be opened. The caller closes
    the fd, and runs the program through it (:func:`fd_path`), so a rename or swap after the
    check cannot change what runs.
    """
    if strict and expect is None:
        problem, st = chain_problem(path, uid)
        if problem is not None or st is None:
            raise Refused(problem or f"cannot check {path}")
        expect = identity(st)
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path} is not a regular file")
        if expect is not None and identity(st) != expect:
            raise Refused(f"{path} was replaced between the check and the run")
        if strict and (problem := unsafe(st, uid)):
            raise Refused(f"{path} is {problem} {fix_hint(path)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def fd_path(fd: int) -> str:
    """The path that runs the open file ``fd`` in a child that inherits it (same number)."""
    return f"/proc/self/fd/{fd}"


@contextlib.contextmanager
def pinned(fd: int, name: str) -> Iterator[str]:
    """A path ending in ``name`` that runs the open file ``fd`` and nothing else.

    A symbolic link ``<private dir>/<name>`` to ``/proc/self/fd/<fd>``, in a fresh 0700
    directory of the temporary folder. Executing it runs the very file opened (and checked),
    whatever is renamed meanwhile; and since a ``#!`` script's interpreter is handed this path,
    its ``$0`` keeps the script's own name (``basename "$0"``), in another folder.
    """
    parent = tempfile.gettempdir()
    try:
        unsafe_parent = unsafe(os.stat(parent), os.geteuid(), allow_sticky=True)
    except OSError:
        unsafe_parent = "unusable"
    if unsafe_parent:  # nowhere private to put the link: run it under its fd's name
        yield fd_path(fd)
        return
    folder = tempfile.mkdtemp(prefix="ipfailover-run-", dir=parent)
    try:
        link = os.path.join(folder, name)
        os.symlink(fd_path(fd), link)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the folder ---------------------------------------------------------------------------------


def script_folder(cfg: config.Config, given: Sequence[config.IPAddress] = ()) -> Path:
    """``<FAILOVER_SCRIPT_DIR>/<address>/``: Apple named it after the primary's public IP.

    The address is the first pair's of FAILOVER_PEER_IP_PAIRS (in Apple's setup the primary's
    public IP), else FAILOVER_PEER_IP, else the first of ``given`` (``ipfailover process`` with a
    configuration that names neither). failoverd and ``process`` thus use the same folder.
    """
    if cfg.peer_ip_pairs:
        address: object = cfg.peer_ip_pairs[0].address
    elif cfg.peer_ip is not None:
        address = cfg.peer_ip
    elif given:
        address = given[0]
    else:
        raise ValueError("no address to name the script folder after")
    return Path(cfg.script_dir) / str(address)


def sort_key(name: str) -> bytes:
    """``ls`` order in the C locale: a bytewise comparison of the file names."""
    return os.fsencode(name)


class ScriptFolder:
    """The scripts of one folder, checked and run under one timeout.

    ``enforce`` turns on the StrictModes checks; the daemon passes
    ``FAILOVER_SCRIPT_STRICT and euid == 0``. A missing folder means no scripts.
    """

    @classmethod
    def for_config(cls, cfg: config.Config, folder: Path | None = None) -> ScriptFolder:
        """The folder ``cfg`` names (or ``folder``), with its timeout, and the StrictModes
        checks on when FAILOVER_SCRIPT_STRICT says so and we run as root."""
        return cls(
            script_folder(cfg) if folder is None else folder,
            timeout=cfg.script_timeout,
            enforce=cfg.script_strict and os.geteuid() == 0,
        )

    def __init__(
        self, path: Path, *, timeout: float, enforce: bool, uid: int | None = None
    ) -> None:
        self._path = path
        self.timeout = timeout
        self.enforce = enforce
        self.uid = os.geteuid() if uid is None else uid

    @property
    def path(self) -> Path:
        return self._path

    def scripts(self, phase: Phase) -> list[Script]:
        """The scripts of ``phase`` in run order, each checked now (not cached: admins edit)."""
        try:
            names = [e.name for e in os.scandir(self._path)]
        except FileNotFoundError:
            return []
        except OSError as e:
            return [Script(self._path / str(phase), phase, f"cannot list the folder: {e.strerror}")]
        if phase is Phase.TEST:
            names = [n for n in names if n == Phase.TEST.value]
        else:
            names = [n for n in names if n.startswith(phase.value)]
        found = [self._check(self._path / n, phase) for n in sorted(names, key=sort_key)]
        return [s for s in found if s is not None]

    def _check(self, path: Path, phase: Phase) -> Script | None:
        """The script at ``path``, with its problem if unsafe; None if it is not a program.

        A name that matches but is a directory or lacks the execute bit (a README, an editor
        backup) is not a script; the executor never sees it.
        """
        try:
            st = path.stat()  # follows a symlink: the target is what runs
        except OSError as e:
            return Script(path, phase, f"cannot stat: {e.strerror}")
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            return None
        if not self.enforce:
            return Script(path, phase)
        problem = folder_problem(self._path, self.uid)
        if problem is not None:
            return Script(path, phase, problem)
        chain, checked = chain_problem(path, self.uid)
        if chain is not None:
            problem = (
                f"script {chain}" if chain.startswith(str(path)) else f"script {path}: {chain}"
            )
        ident = identity(checked) if checked is not None else identity(st)
        return Script(path, phase, problem, ident)

    async def run(self, script: Script, env: Mapping[str, str]) -> ScriptResult:
        """Run one script (or refuse it); never raises for the script's own misbehaviour."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if script.problem is not None:
            refused = f"refused: {script.problem}"
            return ScriptResult(
                script.name, script.phase, Status.REFUSED, started, 0.0, detail=refused
            )
        try:
            fd = open_checked(
                script.path, uid=self.uid, strict=self.enforce, expect=script.identity
            )
        except Refused as e:
            refused = f"refused: {e}"
            return ScriptResult(
                script.name, script.phase, Status.REFUSED, started, 0.0, detail=refused
            )
        except OSError as e:
            error = f"could not start: cannot open {script.path}: {e.strerror}"
            return ScriptResult(script.name, script.phase, Status.ERROR, started, 0.0, detail=error)
        try:
            with pinned(fd, script.name) as runnable:
                res = await run_program(
                    [str(script.path)],
                    env={**env, "IPFAILOVER_SCRIPT": str(script.path)},
                    cwd=self._path,
                    timeout=self.timeout,
                    executable=runnable,
                    pass_fds=(fd,),
                )
        finally:
            os.close(fd)
        return script_result(script, res, started, self.timeout)


def script_result(
    script: Script, res: ProgramResult, started: float, timeout: float
) -> ScriptResult:
    """Classify a finished run of ``script``."""
    if res.error is not None:
        status, detail = Status.ERROR, f"could not start: {res.error}"
    elif res.timed_out:
        status, detail = Status.TIMEOUT, f"killed after the {timeout:g} s timeout"
    elif res.exit_code == 0:
        status, detail = Status.OK, "exit 0"
    elif res.exit_code is not None and res.exit_code < 0:
        status, detail = Status.FAILED, f"killed by {signal.Signals(-res.exit_code).name}"
    else:
        status, detail = Status.FAILED, f"exit {res.exit_code}"
    output = res.output
    if res.output_dropped:
        output += f"\n[{res.output_dropped} more bytes of output not kept]"
    return ScriptResult(
        script.name, script.phase, status, started, res.duration, res.exit_code, output, detail
    )


# --- running a program ----------------------------------------------------------------------------


class _Collector(asyncio.Protocol):
    """Reads a pipe to EOF, keeping the first ``limit`` bytes and counting the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0
        self.eof = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = max(0, self.limit - len(self.data))
        self.data += data[:room]
        self.dropped += max(0, len(data) - room)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)


async def run_program(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    timeout: float,
    stdin: bytes | None = None,
    executable: str | None = None,
    pass_fds: Sequence[int] = (),
) -> ProgramResult:
    """Run ``argv`` with a timeout; capture stdout and stderr together through one pipe.

    The program gets its own session, so on timeout ``killpg(SIGKILL)`` reaches everything it
    started that stayed in its process group; and its own cgroup where the host has one, so a
    timeout kills even what left the group with ``setsid`` (:mod:`ipfailover.shell.cgroups`). What a
    program that exited normally left running keeps running. Its output pipe is ours, not
    asyncio's: once the program has exited we wait at most EOF_GRACE for the pipe to close and
    then stop reading, so a background child that inherited the pipe (``daemon &``) cannot hold
    the transition up.
    """
    group = cgroups.ScriptGroup.create()
    ended = False
    try:
        res = await _run_in(
            group,
            argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            stdin=stdin,
            executable=executable,
            pass_fds=pass_fds,
        )
        ended = res.error is None and not res.timed_out
        return res
    finally:
        if group is not None:  # after a timeout or a cancel, whatever is left is killed
            await asyncio.shield(group.close(kill=not ended))


async def _run_in(
    group: cgroups.ScriptGroup | None,
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    timeout: float,
    stdin: bytes | None,
    executable: str | None,
    pass_fds: Sequence[int],
) -> ProgramResult:
    loop = asyncio.get_running_loop()
    started = loop.time()
    read_fd, write_fd = os.pipe()
    try:
        proc = await cgroups.spawn_inside(
            group,
            lambda: asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
                executable=executable,  # run this (e.g. /proc/self/fd/N); argv[0] stays argv's
                pass_fds=tuple(pass_fds),
            ),
        )
    except OSError as e:
        os.close(read_fd)
        return ProgramResult(None, False, "", 0, loop.time() - started, e.strerror or str(e))
    finally:
        os.close(write_fd)
    transport, collector = await loop.connect_read_pipe(
        lambda: _Collector(OUTPUT_LIMIT), os.fdopen(read_fd, "rb", buffering=0)
    )
    timed_out = False
    try:
        await asyncio.wait_for(_feed_and_wait(proc, stdin), timeout)
    except TimeoutError:
        timed_out = True
        _kill_group(proc.pid, group)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), KILL_WAIT)
    except asyncio.CancelledError:
        _kill_group(proc.pid, group)  # the daemon is going away: take the program with it
        transport.close()
        raise
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(collector.eof), EOF_GRACE)
    transport.close()
    return ProgramResult(
        None if timed_out else proc.returncode,
        timed_out,
        bytes(collector.data).decode("utf-8", "replace"),
        collector.dropped,
        loop.time() - started,
    )


async def _feed_and_wait(proc: asyncio.subprocess.Process, stdin: bytes | None) -> None:
    if stdin is not None and proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        proc.stdin.close()
    await proc.wait()


def _kill_group(pgid: int, group: cgroups.ScriptGroup | None = None) -> None:
    """SIGKILL the process group we created for a program (its pid is the group id), and
    everything in its cgroup if it has one."""
    if group is not None:
        group.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
