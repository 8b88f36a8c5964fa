"""Transition scripts: finding, checking and running them, with real scripts (sh).

The scripts are real programs run by :mod:`ipfailover.shell.scripts`; the executor that runs them
in a takeover or a release is tested in ``test_executor.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from scriptkit import make_folder, pid_alive, run, wait_dead, write_script

from ipfailover.shell import scripts as hooks
from ipfailover.shell.scripts import Phase, ScriptFolder, Status

#: A real bound for what must end by itself much sooner (a timeout that must fire): it keeps
#: a broken run from hanging the test, and asserts nothing about speed.
LONG = 20.0


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


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
    runner = ScriptFolder(folder, timeout=0.5, enforce=True)
    # The 0.5 s timeout must really fire; LONG only keeps a broken one from hanging the test.
    res = run(asyncio.wait_for(runner.run(hooks.Script(script, Phase.PRE_ACQ), {}), LONG))
    assert isinstance(res, hooks.ScriptResult)
    assert res.status is Status.TIMEOUT and "0.5 s timeout" in res.detail
    pids = [int((folder / f).read_text()) for f in ("child.pid", "grandchild.pid")]
    assert wait_dead(pids), "the script's children survived its timeout"


def test_background_child_holding_the_output_does_not_hold_the_script_up(folder: Path) -> None:
    script = write_script(folder, "PostAcq1", "sleep 30 & echo $! > bg.pid; echo started; exit 0")
    runner = ScriptFolder(folder, timeout=10, enforce=True)
    try:
        res = run(asyncio.wait_for(runner.run(hooks.Script(script, Phase.POST_ACQ), {}), LONG))
        assert isinstance(res, hooks.ScriptResult)
        assert res.status is Status.OK and res.output.strip() == "started"
        # The run is over while the child that holds its output pipe still runs: it was not
        # waited for (it sleeps 30 s; had the run waited for the pipe, the child would be gone).
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


class TickClock:
    """A clock whose monotonic time is the next of the given ticks, one per reading."""

    def __init__(self, *ticks: float) -> None:
        self.ticks = iter(ticks)

    def time(self) -> float:
        raise AssertionError("durations are measured on the monotonic clock")

    def monotonic(self) -> float:
        return next(self.ticks)

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("a script run does not sleep on the clock")


def test_a_runs_start_and_duration_are_read_from_the_injected_clock(folder: Path) -> None:
    script = write_script(folder, "PostAcq1", "exit 0")
    clock = TickClock(100.0, 100.25, 107.5)  # the run starts, the program starts, it ends
    runner = ScriptFolder(folder, timeout=5, enforce=True, clock=clock)
    res = run(runner.run(hooks.Script(script, Phase.POST_ACQ), {}))
    assert isinstance(res, hooks.ScriptResult) and res.status is Status.OK
    assert (res.started, res.duration) == (100.0, 7.25)
    refused = hooks.Script(script, Phase.POST_ACQ, problem="writable by others")
    clock.ticks = iter([200.0])
    res = run(runner.run(refused, {}))
    assert isinstance(res, hooks.ScriptResult) and res.status is Status.REFUSED
    assert (res.started, res.duration) == (200.0, 0.0)


def test_run_program_reads_its_duration_from_the_injected_clock() -> None:
    res = run(
        hooks.run_program(["/bin/true"], env={}, cwd="/", timeout=5, clock=TickClock(10.0, 12.5))
    )
    assert isinstance(res, hooks.ProgramResult)
    assert (res.exit_code, res.duration) == (0, 2.5)


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
