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

This module finds and classifies the scripts; :mod:`ipfailover.shell.trust` decides whether one
may run and :mod:`ipfailover.shell.program` runs it (:func:`run_program` is the general runner;
the notifier uses it for ``FAILOVER_NOTIFY_PROGRAM``). Their names are re-exported here.
"""

from __future__ import annotations

import enum
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ipfailover.core import config
from ipfailover.shell.clock import SYSTEM_CLOCK, Clock
from ipfailover.shell.program import OUTPUT_LIMIT as OUTPUT_LIMIT
from ipfailover.shell.program import SCRIPT_PATH as SCRIPT_PATH
from ipfailover.shell.program import ProgramResult as ProgramResult
from ipfailover.shell.program import run_program as run_program
from ipfailover.shell.trust import Refused as Refused
from ipfailover.shell.trust import chain_problem as chain_problem
from ipfailover.shell.trust import fix_hint as fix_hint
from ipfailover.shell.trust import folder_problem as folder_problem
from ipfailover.shell.trust import identity as identity
from ipfailover.shell.trust import open_checked as open_checked
from ipfailover.shell.trust import pinned as pinned
from ipfailover.shell.trust import unsafe as unsafe


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
class ScriptResult:
    """One script's run, as reported in the log, the transition record and the mail."""

    name: str
    phase: Phase
    status: Status
    started: float  # when it started (or was refused): the clock's time, by default the loop's
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
        self,
        path: Path,
        *,
        timeout: float,
        enforce: bool,
        uid: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._path = path
        self.timeout = timeout
        self.enforce = enforce
        self.uid = os.geteuid() if uid is None else uid
        self.clock = clock  # what ``started`` and ``duration`` are read from

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
        started = self.clock.monotonic()
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
                    clock=self.clock,
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
