"""Transition scripts and the executor, with real scripts (sh) and a fake address backend.

The scripts are real programs run by :mod:`ipfailover.shell.scripts`; only the netlink side is
replaced (by :class:`FakeBackend`, which writes every change to the same log the scripts write to),
so the order of scripts and address changes is observed, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipfailover import failoverd, mail
from ipfailover.core import config
from ipfailover.failover import executor as transition
from ipfailover.failover.executor import Action, Announcing, Executor, Outcome
from ipfailover.shell import netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell.scripts import Phase, ScriptFolder, Status
from ipfailover.tools import process

V4 = netif.Assignment(
    ifname="pub0", ifindex=2, address=ipaddress.ip_address("203.0.113.10"), prefixlen=24
)
V6 = netif.Assignment(
    ifname="pub0", ifindex=2, address=ipaddress.ip_address("2001:db8:1::10"), prefixlen=64
)
SITUATION = mail.Situation(
    node="secondary", host="s.example", peer="primary", addresses=("pub0:203.0.113.10/24",)
)


def write_script(folder: Path, name: str, body: str, mode: int = 0o755) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "scripts" / "203.0.113.10"
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


# --- the folder -----------------------------------------------------------------------------------


def test_scripts_run_in_bytewise_ls_order_and_only_executables_count(folder: Path) -> None:
    for name in ["PreAcqa", "PreAcq_x", "PreAcqB", "PreAcq2.a", "PreAcq10.b", "PreAcq"]:
        write_script(folder, name, "exit 0")
    write_script(folder, "PreAcq.txt", "not a program", mode=0o644)
    (folder / "PreAcqDir").mkdir()
    write_script(folder, "PostAcq1", "exit 0")
    found = ScriptFolder(folder, timeout=5, enforce=True).scripts(Phase.PRE_ACQ)
    # C-locale ls: '1' < '2' < 'B' < '_' < 'a'; a natural or case-folding sort would differ
    assert [s.name for s in found] == [
        "PreAcq", "PreAcq10.b", "PreAcq2.a", "PreAcqB", "PreAcq_x", "PreAcqa",
    ]  # fmt: skip
    assert all(s.problem is None for s in found)


def test_test_is_the_exact_name_and_a_missing_folder_means_no_scripts(
    folder: Path, tmp_path: Path
) -> None:
    for name in ["Test", "Test2", "TestOld"]:
        write_script(folder, name, "exit 0")
    assert [s.name for s in ScriptFolder(folder, timeout=5, enforce=True).scripts(Phase.TEST)] == [
        "Test"
    ]
    missing = ScriptFolder(tmp_path / "nope", timeout=5, enforce=True)
    assert all(missing.scripts(phase) == [] for phase in Phase)


def test_script_gets_clean_env_folder_as_cwd_and_empty_stdin(folder: Path) -> None:
    script = write_script(
        folder,
        "PostAcq1",
        'echo "cwd=$(pwd)"; echo "args=$#"; echo "stdin=$(cat)"; env | sort; echo oops >&2',
    )
    runner = ScriptFolder(folder, timeout=5, enforce=True)
    env = {"PATH": hooks.SCRIPT_PATH, "IPFAILOVER_ACTION": "acquire"}
    res = run(runner.run(hooks.Script(script, Phase.POST_ACQ), env))
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.OK and res.detail == "exit 0"
    lines = res.output.splitlines()
    assert f"cwd={folder}" in lines and "args=0" in lines and "stdin=" in lines
    assert "oops" in lines  # stderr is captured with stdout
    env_lines = {line for line in lines if "=" in line and line.isupper() is False}
    assert "IPFAILOVER_ACTION=acquire" in env_lines
    assert not any(line.startswith("HOME=") or line.startswith("PYTEST") for line in lines)


def test_failing_script_reports_exit_status_and_output(folder: Path) -> None:
    script = write_script(folder, "PreRel1", "echo cannot stop apache; exit 3")
    res = run(
        ScriptFolder(folder, timeout=5, enforce=True).run(hooks.Script(script, Phase.PRE_REL), {})
    )
    assert isinstance(res, hooks.ScriptResult)
    assert (res.status, res.exit_code, res.detail) == (Status.FAILED, 3, "exit 3")
    assert res.output.strip() == "cannot stop apache"


def test_timeout_kills_the_whole_process_group_including_grandchildren(folder: Path) -> None:
    script = write_script(
        folder,
        "PreAcq1",
        "sleep 300 & echo $! > child.pid\n"
        "sh -c 'sleep 300 & echo $! > grandchild.pid; wait' &\n"
        "wait",
    )
    began = time.monotonic()
    res = run(
        ScriptFolder(folder, timeout=0.5, enforce=True).run(hooks.Script(script, Phase.PRE_ACQ), {})
    )
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.TIMEOUT and "0.5 s timeout" in res.detail
    assert time.monotonic() - began < 3.0
    pids = [int((folder / f).read_text()) for f in ("child.pid", "grandchild.pid")]
    assert wait_dead(pids), "the script's children survived its timeout"


def test_background_child_holding_the_output_does_not_hold_the_script_up(folder: Path) -> None:
    script = write_script(folder, "PostAcq1", "sleep 30 & echo $! > bg.pid; echo started; exit 0")
    began = time.monotonic()
    try:
        res = run(
            ScriptFolder(folder, timeout=10, enforce=True).run(
                hooks.Script(script, Phase.POST_ACQ), {}
            )
        )
        assert isinstance(res, hooks.ScriptResult)
        assert res.status is Status.OK and res.output.strip() == "started"
        assert time.monotonic() - began < 2.0
        assert pid_alive(int((folder / "bg.pid").read_text()))  # a started service keeps running
    finally:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            os.kill(int((folder / "bg.pid").read_text()), signal.SIGKILL)


def test_output_beyond_the_limit_is_counted_not_kept(folder: Path) -> None:
    script = write_script(folder, "PostAcq1", "head -c 200000 /dev/zero | tr '\\0' x")
    res = run(
        ScriptFolder(folder, timeout=10, enforce=True).run(hooks.Script(script, Phase.POST_ACQ), {})
    )
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.OK
    assert res.output.startswith("x" * hooks.OUTPUT_LIMIT)
    assert f"[{200000 - hooks.OUTPUT_LIMIT} more bytes of output not kept]" in res.output


def test_a_script_that_cannot_start_is_an_error(folder: Path) -> None:
    script = folder / "PostAcq1"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    res = run(
        ScriptFolder(folder, timeout=5, enforce=True).run(hooks.Script(script, Phase.POST_ACQ), {})
    )
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.ERROR and "could not start" in res.detail


def test_run_program_feeds_stdin() -> None:
    res = run(hooks.run_program(["/bin/cat"], env={}, cwd="/", timeout=5, stdin=b"hello\n"))
    assert isinstance(res, hooks.ProgramResult)
    assert (res.exit_code, res.output) == (0, "hello\n")


# --- safety ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "change", "message"),
    [
        ("script", lambda f, s: s.chmod(0o777), "writable by group and others (mode 0777)"),
        ("script", lambda f, s: s.chmod(0o775), "writable by group (mode 0775)"),
        ("script", lambda f, s: os.chown(s, 65534, -1), "owned by uid 65534, not root"),
        ("folder", lambda f, s: f.chmod(0o757), "writable by others (mode 0757)"),
        ("folder", lambda f, s: os.chown(f, 65534, -1), "owned by uid 65534, not root"),
        ("above the script folder", lambda f, s: f.parent.chmod(0o777), "mode 0777"),
    ],
)
def test_strict_mode_refuses_what_others_could_change(
    folder: Path, what: str, change: object, message: str
) -> None:
    script = write_script(folder, "PostAcq1", "echo ran > ran")
    change(folder, script)  # type: ignore[operator]
    found = ScriptFolder(folder, timeout=5, enforce=True).scripts(Phase.POST_ACQ)
    assert len(found) == 1 and found[0].problem is not None
    assert message in found[0].problem and what in found[0].problem
    res = run(ScriptFolder(folder, timeout=5, enforce=True).run(found[0], {}))
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.REFUSED and not (folder / "ran").exists()
    relaxed = ScriptFolder(folder, timeout=5, enforce=False).scripts(Phase.POST_ACQ)
    assert relaxed[0].problem is None  # FAILOVER_SCRIPT_STRICT=no


def test_a_sticky_world_writable_ancestor_like_tmp_is_accepted(folder: Path) -> None:
    write_script(folder, "PostAcq1", "exit 0")
    folder.parent.chmod(0o1777)
    found = ScriptFolder(folder, timeout=5, enforce=True).scripts(Phase.POST_ACQ)
    assert found[0].problem is None
    folder.chmod(0o1777)  # but not for the script folder itself
    assert ScriptFolder(folder, timeout=5, enforce=True).scripts(Phase.POST_ACQ)[0].problem


def safe_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, d: t.chmod(0o757), "(the target of {link}) is writable by others (mode 0757)"),
        (lambda t, d: os.chown(t, 65534, -1), "(the target of {link}) is owned by uid 65534"),
        (lambda t, d: d.chmod(0o777), "directory {dir} (above {link}) is writable by group"),
        (lambda t, d: os.chown(d, 65534, -1), "directory {dir} (above {link}) is owned by uid"),
        (lambda t, d: d.parent.chmod(0o775), "directory {up} (above {link}) is writable by group"),
    ],
)
def test_a_symlinked_script_is_refused_if_its_target_or_a_directory_above_it_is_unsafe(
    folder: Path, tmp_path: Path, change: Any, message: str
) -> None:
    elsewhere = safe_dir(safe_dir(tmp_path / "opt") / "bin")
    target = write_script(elsewhere, "start-web", "echo ran > ran")
    link = folder / "PostAcq10.web"
    link.symlink_to(target)
    runner = ScriptFolder(folder, timeout=5, enforce=True)
    assert runner.scripts(Phase.POST_ACQ)[0].problem is None  # safe as it is
    change(target, elsewhere)
    found = runner.scripts(Phase.POST_ACQ)
    assert len(found) == 1 and found[0].problem is not None, found
    expected = message.format(link=link, dir=elsewhere, up=elsewhere.parent)
    assert expected in found[0].problem and "fix: chown root" in found[0].problem
    res = run(runner.run(found[0], {}))
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.REFUSED and not (folder / "ran").exists()


def test_a_symlink_someone_else_owns_is_refused_even_to_a_safe_target(
    folder: Path, tmp_path: Path
) -> None:
    sticky = tmp_path / "drop"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: anyone may add entries, and owns what they add
    target = write_script(safe_dir(tmp_path / "bin"), "start", "exit 0")
    theirs = sticky / "start"
    theirs.symlink_to(target)
    os.lchown(theirs, 65534, -1)
    (folder / "PostAcq1").symlink_to(theirs)
    found = ScriptFolder(folder, timeout=5, enforce=True).scripts(Phase.POST_ACQ)
    assert found[0].problem is not None
    assert f"symbolic link {theirs} is owned by uid 65534" in found[0].problem


def test_a_script_swapped_after_the_check_is_not_what_runs(folder: Path) -> None:
    write_script(folder, "PostAcq1", "echo checked")
    runner = ScriptFolder(folder, timeout=5, enforce=True)
    (checked,) = runner.scripts(Phase.POST_ACQ)
    assert checked.problem is None
    swap = write_script(folder, ".new", "echo swapped > swapped")
    os.replace(swap, folder / "PostAcq1")  # root renames another file over it
    res = run(runner.run(checked, {}))
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.REFUSED and "replaced between the check and the run" in res.detail
    assert not (folder / "swapped").exists()


def test_a_script_runs_from_the_file_opened_not_from_its_name(folder: Path) -> None:
    """Once opened, a rename cannot change what runs; $0 keeps the script's own name."""
    script = write_script(
        folder,
        "PostAcq1",
        'sleep 0.3; echo "name=$(basename "$0") script=$IPFAILOVER_SCRIPT"; cat "$0" | wc -l',
    )
    runner = ScriptFolder(folder, timeout=5, enforce=True)
    (checked,) = runner.scripts(Phase.POST_ACQ)

    async def swap_while_running() -> hooks.ScriptResult:
        task = asyncio.ensure_future(runner.run(checked, {"PATH": hooks.SCRIPT_PATH}))
        await asyncio.sleep(0.1)  # started: the interpreter has the file
        os.replace(write_script(folder, ".new", "echo swapped\n" * 50), script)
        return await task

    res = run(swap_while_running())
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.OK, res
    lines = res.output.split()
    assert f"script={script}" in lines and "name=PostAcq1" in lines
    assert lines[-1] == "2"  # it read back its own two lines, not the 51 of the new file


def test_a_binary_script_keeps_its_real_path_as_argv0(folder: Path) -> None:
    target = folder / "PostAcq1"
    os.symlink("/usr/bin/basename", target)  # a root-owned program, through a link in the folder
    found = ScriptFolder(folder, timeout=5, enforce=True).scripts(Phase.POST_ACQ)
    assert found[0].problem is None, found
    res = run(ScriptFolder(folder, timeout=5, enforce=True).run(found[0], {}))
    assert isinstance(res, hooks.ScriptResult) and res.status is Status.FAILED, res
    assert res.output.startswith(f"{target}: missing operand")  # GNU names itself by argv[0]


# --- the executor ---------------------------------------------------------------------------------


class FakeBackend:
    """Address changes as lines in the shared log, and the present set in a file scripts read."""

    def __init__(self, log: Path, state: Path, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.log = log
        self.state = state
        self.fail = fail
        self.present: set[str] = set()
        self.announces: list[tuple[str, int, float, float]] = []
        self._write()

    def _write(self) -> None:
        self.state.write_text(" ".join(sorted(self.present)))

    def _note(self, text: str) -> None:
        with self.log.open("a") as f:
            f.write(text + "\n")

    async def add(self, a: netif.Assignment) -> bool:
        if str(a.address) in self.fail:
            raise netif.NetifError(f"cannot add {a}: test failure")
        self.present.add(str(a.address))
        self._write()
        self._note(f"add {a.address}")
        return True

    async def delete(self, a: netif.Assignment) -> bool:
        self.present.discard(str(a.address))
        self._write()
        self._note(f"delete {a.address}")
        return True

    async def announce(self, a: netif.Assignment, count: int, interval: float) -> int:
        self.announces.append((str(a.address), count, interval, time.monotonic()))
        self._note(f"announce {a.address} {count}")
        return count


class Notices:
    def __init__(self) -> None:
        self.sent: list[mail.Notice] = []

    async def submit(self, notice: mail.Notice) -> object:
        self.sent.append(notice)
        return None


class Events(daemon.EventLog):
    """An EventLog that also keeps (event, fields)."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("test.hooks"))
        self.seen: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, level: int = logging.INFO, **fields: object) -> None:
        self.seen.append((event, fields))
        super().__call__(event, level, **fields)


RECORDER = 'echo "$(basename "$0") $IPFAILOVER_ACTION present=$(cat ../state) {extra}" >> ../log'


@pytest.fixture
def bench(folder: Path) -> Iterator[tuple[Executor, FakeBackend, Notices, Path]]:
    log = folder.parent / "log"
    log.write_text("")
    backend = FakeBackend(log, folder.parent / "state")
    notices = Notices()
    executor = Executor(
        node="secondary",
        addresses=[V4, V6],
        scripts=ScriptFolder(folder, timeout=2, enforce=True),
        backend=backend,
        announcing=Announcing(3, 0.05),
        notifier=notices,
        events=daemon.EventLog(logging.getLogger("test")),
    )
    yield executor, backend, notices, log


def lines(log: Path) -> list[str]:
    return [line.rstrip() for line in log.read_text().splitlines()]


def acquire(executor: Executor, gate: bool = True) -> transition.TransitionRecord:
    async def go() -> transition.TransitionRecord:
        rec = await executor.acquire("peer-silent", SITUATION, gate=gate)
        await executor.drain()
        return rec

    return asyncio.run(go())


def test_acquire_runs_test_pre_change_announce_post_in_that_order(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, backend, notices, log = bench
    for name in ["Test", "PreAcq10.one", "PreAcq20.two", "PostAcq10.three", "PostAcq20.four"]:
        write_script(folder, name, RECORDER.format(extra=""))
    write_script(folder, "PreRel10.never", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.DONE and rec.ok
    both = "2001:db8:1::10 203.0.113.10"
    # the second announcements run in the background and may land anywhere among PostAcq's
    repeats = ("announce 203.0.113.10 2", "announce 2001:db8:1::10 2")
    assert [line for line in lines(log) if line not in repeats][:9] == [
        "Test acquire present=",
        "PreAcq10.one acquire present=",
        "PreAcq20.two acquire present=",
        "add 203.0.113.10",
        "add 2001:db8:1::10",
        "announce 203.0.113.10 1",
        "announce 2001:db8:1::10 1",
        f"PostAcq10.three acquire present={both}",
        f"PostAcq20.four acquire present={both}",
    ]
    # the rest of the announcements follow in the background, one interval after the first
    rest = [a for a in backend.announces if a[1] == 2]
    assert sorted(a[0] for a in rest) == ["2001:db8:1::10", "203.0.113.10"]
    assert all(a[2] == 0.05 for a in rest)
    assert [s.name for s in rec.steps] == [
        "Test", "PreAcq", "add-addresses", "announce", "PostAcq",
    ]  # fmt: skip
    assert rec.changed_at is not None and rec.steps[2].start <= rec.changed_at
    (notice,) = notices.sent
    assert notice.event == "takeover" and notice.direction == "down"
    assert notice.ips == ("203.0.113.10", "2001:db8:1::10")
    assert notice.subject.startswith("[ipfailover] secondary took over 203.0.113.10")


def test_test_saying_no_declines_the_takeover_and_only_mails(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, backend, notices, log = bench
    write_script(folder, "Test", RECORDER.format(extra="") + "\nexit 1")
    write_script(folder, "PreAcq10", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.DECLINED and not rec.ok
    assert rec.why == "Test said no (exit 1)"
    assert lines(log) == ["Test acquire present="]
    assert backend.present == set() and backend.announces == []
    (notice,) = notices.sent
    assert notice.event == "takeover-declined"
    assert "did NOT take over" in notice.subject and "Test said no (exit 1)" in notice.subject
    assert "script(s) failed" not in notice.subject


def test_a_test_that_times_out_declines_with_the_reason(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, _, notices, _ = bench
    write_script(folder, "Test", "sleep 30")
    rec = acquire(executor)
    assert rec.outcome is Outcome.DECLINED
    assert rec.why == "Test said no (killed after the 2 s timeout)"
    assert "killed after the 2 s timeout" in notices.sent[0].body


def test_a_failing_script_is_reported_but_does_not_stop_the_others(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, _, notices, log = bench
    write_script(folder, "PreAcq10.bad", "echo disk full >&2; exit 7")
    write_script(folder, "PreAcq20.good", RECORDER.format(extra=""))
    write_script(folder, "PostAcq10.ww", RECORDER.format(extra=""), mode=0o777)
    write_script(folder, "PostAcq20.good", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.DONE
    statuses = {r.name: r.status for r in rec.scripts}
    assert statuses == {
        "PreAcq10.bad": Status.FAILED,
        "PreAcq20.good": Status.OK,
        "PostAcq10.ww": Status.REFUSED,
        "PostAcq20.good": Status.OK,
    }
    assert "PostAcq10.ww" not in log.read_text()
    (notice,) = notices.sent
    assert notice.subject.endswith("-- 2 script(s) failed or refused")
    assert "disk full" in notice.body and "REFUSED" in notice.body
    assert "writable by group and others (mode 0777)" in notice.body


def test_release_is_gated_by_test_except_for_shutdown(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, backend, notices, log = bench
    write_script(folder, "Test", RECORDER.format(extra="") + '\n[ "$IPFAILOVER_ACTION" = acquire ]')
    write_script(folder, "PreRel10", RECORDER.format(extra=""))
    write_script(folder, "PostRel10", RECORDER.format(extra=""))

    async def go() -> tuple[transition.TransitionRecord, ...]:
        taken = await executor.acquire("peer-silent", SITUATION)
        refused = await executor.release("peer-heard", SITUATION, gate=True)
        refused_again = await executor.release("peer-heard", SITUATION, gate=True)
        stopping = await executor.release("shutdown", SITUATION, gate=False)
        return taken, refused, refused_again, stopping

    taken, refused, _, stopping = asyncio.run(go())  # type: ignore[misc]
    assert taken.ok and not refused.ok and refused.outcome is Outcome.DECLINED
    assert stopping.outcome is Outcome.DONE and backend.present == set()
    both = "2001:db8:1::10 203.0.113.10"
    assert [line for line in lines(log) if not line.startswith("announce")] == [
        "Test acquire present=",
        "add 203.0.113.10",
        "add 2001:db8:1::10",
        "Test release present=" + both,  # refused: we keep holding
        "Test release present=" + both,  # refused again after the next hold-down
        "PreRel10 release present=" + both,  # shutdown: no Test
        "delete 203.0.113.10",
        "delete 2001:db8:1::10",
        "PostRel10 release present=",
    ]
    # the same refusal again (every hold-down) is mailed once
    assert [n.event for n in notices.sent] == ["takeover", "release-declined", "release"]
    assert "retrying after the hold-down" in notices.sent[1].subject


def test_transitions_are_serialized(
    bench: tuple[Executor, FakeBackend, Notices, Path], folder: Path
) -> None:
    executor, _, _, log = bench
    write_script(folder, "PostAcq10.slow", "sleep 0.3; " + RECORDER.format(extra="end"))
    write_script(folder, "PreRel10", RECORDER.format(extra="start"))

    async def go() -> None:
        first = asyncio.create_task(executor.acquire("peer-silent", SITUATION))
        await asyncio.sleep(0.05)  # the acquire is inside its PostAcq script now
        await executor.release("peer-heard", SITUATION, gate=True)
        await first

    asyncio.run(go())
    order = [line.split()[0] for line in lines(log)]
    assert order.index("PostAcq10.slow") < order.index("PreRel10")


def test_no_address_added_is_a_failure_and_post_scripts_do_not_run(
    folder: Path,
) -> None:
    log = folder.parent / "log"
    backend = FakeBackend(log, folder.parent / "state", fail={"203.0.113.10", "2001:db8:1::10"})
    notices = Notices()
    executor = Executor(
        node="secondary",
        addresses=[V4, V6],
        scripts=ScriptFolder(folder, timeout=2, enforce=True),
        backend=backend,
        announcing=Announcing(1, 0.05),
        notifier=notices,
    )
    write_script(folder, "PostAcq10", RECORDER.format(extra=""))
    rec = acquire(executor)
    assert rec.outcome is Outcome.FAILED and not rec.ok
    assert len(rec.errors) == 2 and "test failure" in rec.errors[0]
    assert not log.exists() or "PostAcq10" not in log.read_text()
    assert "FAILED to take over" in notices.sent[0].subject
    assert notices.sent[0].event == "takeover-failed"


class HungSpool:
    async def submit(self, notice: mail.Notice) -> object:
        await asyncio.sleep(60)  # a spool on a hung file system
        return None


def test_a_hung_spool_does_not_hold_the_transition_up(folder: Path) -> None:
    log = folder.parent / "log"
    events = Events()
    executor = Executor(
        node="secondary",
        addresses=[V4],
        scripts=ScriptFolder(folder, timeout=2, enforce=True),
        backend=FakeBackend(log, folder.parent / "state"),
        announcing=Announcing(1, 0.05),
        notifier=HungSpool(),
        events=events,
        spool_timeout=0.1,
    )
    began = time.monotonic()
    rec = acquire(executor)
    assert rec.outcome is Outcome.DONE and time.monotonic() - began < 1.0
    (error,) = [f for e, f in events.seen if e == "mail-spool-error"]
    assert error["error"] == "not written in 0.1 s"


def test_script_environment_is_documented_and_complete(folder: Path) -> None:
    env = transition.script_env(
        action=Action.RELEASE,
        reason="peer-heard",
        phase=Phase.PRE_REL,
        node="secondary",
        situation=SITUATION,
        addresses=[V4, V6],
        folder=folder,
    )
    assert env == {
        "PATH": hooks.SCRIPT_PATH,
        "IPFAILOVER_ACTION": "release",
        "IPFAILOVER_REASON": "peer-heard",
        "IPFAILOVER_PHASE": "PreRel",
        "IPFAILOVER_NODE": "secondary",
        "IPFAILOVER_PEER": "primary",
        "IPFAILOVER_ADDRESSES": "pub0:203.0.113.10/24 pub0:2001:db8:1::10/64",
        "IPFAILOVER_IPS": "203.0.113.10 2001:db8:1::10",
        "IPFAILOVER_SCRIPT_DIR": str(folder),
        "IPFAILOVER_PROBE": "",
        "IPFAILOVER_ANSWERING": "",
        "IPFAILOVER_PEER_VERIFIED": "",
    }
    docs = (Path(__file__).parents[2] / "docs" / "scripts.md").read_text()
    assert all(f"`{name}`" in docs for name in env)


def test_a_takeover_of_an_answering_address_says_so_to_the_scripts(folder: Path) -> None:
    """docs/safety.md: the probe's finding goes to Test and every script."""
    situation = dataclasses.replace(
        SITUATION,
        probe="answered",
        answering=(("203.0.113.10", ("02:00:00:00:00:10", "02:00:00:00:00:11")),),
        peer_verified=True,
    )
    env = transition.script_env(
        action=Action.ACQUIRE,
        reason="peer-silent",
        phase=Phase.TEST,
        node="secondary",
        situation=situation,
        addresses=[V4],
        folder=folder,
    )
    assert env["IPFAILOVER_PROBE"] == "answered"
    assert env["IPFAILOVER_ANSWERING"] == (
        "203.0.113.10=02:00:00:00:00:10 203.0.113.10=02:00:00:00:00:11"
    )
    assert env["IPFAILOVER_PEER_VERIFIED"] == "yes"
    text = mail.situation_text(situation, 0.0)
    assert "STILL ANSWERING" in text and "02:00:00:00:00:11" in text


# --- failoverd's lock -----------------------------------------------------------------------------


def test_manager_lock_names_the_pid_and_addresses_and_dies_with_its_holder(
    tmp_path: Path,
) -> None:
    run_dir = str(tmp_path / "run")
    assert transition.manager(run_dir) is None
    lock = transition.ManagerLock.take(run_dir, [V4, V6])
    held = transition.manager(run_dir)
    assert held is not None and held.pid == os.getpid()
    assert held.addresses == ["pub0:203.0.113.10/24", "pub0:2001:db8:1::10/64"]
    other = netif.Assignment(
        ifname="eth9", ifindex=9, address=ipaddress.ip_address("2001:db8:1::10"), prefixlen=128
    )
    assert transition.overlap(held, [other]) == ["2001:db8:1::10"]  # by address, not interface
    with pytest.raises(transition.LockHeld):
        transition.ManagerLock.take(run_dir, [V4])
    lock.close()
    assert transition.manager(run_dir) is None  # the file stays; the flock is gone
    assert stat.S_ISREG((tmp_path / "run" / transition.LOCK_NAME).stat().st_mode)


def test_a_process_run_keeps_failoverd_from_starting_and_leaves_no_pid_behind(
    tmp_path: Path,
) -> None:
    run_dir = str(tmp_path / "run")
    with process.failoverd_kept_out(run_dir, [V4]) as why:
        assert why is None
        with pytest.raises(transition.LockHeld) as held:
            transition.ManagerLock.take(run_dir, [V4])  # what failoverd's start-up does
        assert held.value.pid == os.getpid() and held.value.addresses == []
        lock_file = tmp_path / "run" / transition.LOCK_NAME
        assert "held-by ipfailover process" in lock_file.read_text()
        assert transition.manager(run_dir) is None  # a second process run is not refused
    assert lock_file.read_text() == ""
    transition.ManagerLock.take(run_dir, [V4]).close()  # failoverd starts once the run is over


def test_a_process_run_is_refused_only_for_a_running_failoverds_addresses(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    lock = transition.ManagerLock.take(run_dir, [V6])
    try:
        with process.failoverd_kept_out(run_dir, [V4, V6]) as why:
            assert why is not None and why.startswith(
                f"refused: failoverd (pid {os.getpid()}) manages 2001:db8:1::10 "
            )
        with process.failoverd_kept_out(run_dir, [V4]) as why:
            assert why is None
    finally:
        lock.close()


# --- failoverd's use of the executor -------------------------------------------------------------


class StopDuringTakeover:
    """An executor whose takeover is interrupted by SIGTERM (failoverd's stop handler)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.daemon: Any = None

    def _record(self, action: Action, reason: str) -> transition.TransitionRecord:
        rec = transition.TransitionRecord(action, reason, (), 0.0, 0.0)
        rec.outcome = Outcome.DONE
        return rec

    async def acquire(
        self, reason: str, situation: mail.Situation, *, gate: bool = True
    ) -> transition.TransitionRecord:
        self.calls.append(("acquire", reason, gate))
        self.daemon._on_stop()  # SIGTERM arrives while the takeover is still running
        return self._record(Action.ACQUIRE, reason)

    async def release(
        self, reason: str, situation: mail.Situation, *, gate: bool
    ) -> transition.TransitionRecord:
        self.calls.append(("release", reason, gate))
        return self._record(Action.RELEASE, reason)


def test_a_stop_during_a_takeover_hands_back_right_after_it(tmp_path: Path) -> None:
    """Regression: the release asked for from within acquire_done was taken for an overlap."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config.parse_config(
        f"FAILOVER_PEER_IP=203.0.113.10\nFAILOVER_PORT={port}\n"
        f"FAILOVER_SCRIPT_DIR={tmp_path}/scripts\nFAILOVER_SPOOL_DIR={tmp_path}/spool\n"
    )
    fake = StopDuringTakeover()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        fd = failoverd.Failoverd(cfg, bytes(32), loop, [], ("pub0",), holding=False)
        fake.daemon = fd
        fd.executor = fake  # type: ignore[assignment]
        try:
            fd.core.handle_timer(loop.time() + 10)  # past the start-up grace, all silent
            fd._flush()
            await asyncio.wait_for(fd.stopped.wait(), 5)
        finally:
            fd.udp.close()

    asyncio.run(go())
    assert fake.calls == [("acquire", "peer-silent", True), ("release", "shutdown", False)]
