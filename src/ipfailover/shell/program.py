"""Run a program the way transition scripts and the notify program run: with a timeout, its
output captured, and nothing it started left behind on a timeout.

It runs as an argument list, never through a shell string, with the environment and working
directory the caller gives, stdout and stderr captured together (the first
:data:`OUTPUT_LIMIT` bytes kept), in its own session (process group) and, where the host has
cgroup v2, in its own cgroup (:mod:`ipfailover.shell.cgroups`). On timeout everything it started
is killed with SIGKILL, grandchildren included, and with a cgroup even a child that called
``setsid``. Durations are read from ``clock.monotonic()`` (:mod:`ipfailover.shell.clock`; the
system's by default, which is the event loop's time), so a test can give its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ipfailover.shell import cgroups
from ipfailover.shell.clock import SYSTEM_CLOCK, Clock

#: The PATH scripts and the notify program get (their environment is otherwise clean).
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_LIMIT = 64 * 1024  # bytes of a program's output kept; the rest is read and counted
EOF_GRACE = 0.2  # seconds to wait for the output pipe to close after the program exits
KILL_WAIT = 5.0  # seconds to wait for a SIGKILLed program to be reaped


@dataclass(frozen=True)
class ProgramResult:
    """What a finished program did; ``error`` is set when it could not be started."""

    exit_code: int | None  # None if it timed out or never started; negative = killed by signal
    timed_out: bool
    output: str  # stdout and stderr interleaved, at most OUTPUT_LIMIT bytes of it
    output_dropped: int  # bytes of output beyond the limit (read and discarded)
    duration: float
    error: str | None = None


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
    clock: Clock = SYSTEM_CLOCK,
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
            clock=clock,
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
    clock: Clock,
) -> ProgramResult:
    loop = asyncio.get_running_loop()
    started = clock.monotonic()
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
        return ProgramResult(None, False, "", 0, clock.monotonic() - started, e.strerror or str(e))
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
        clock.monotonic() - started,
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
