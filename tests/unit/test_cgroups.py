"""Issue 8, case 9: a hung script that escapes with ``setsid`` is killed on its timeout.

The script ignores SIGTERM, forks, and its child calls ``setsid`` and forks a grandchild that
writes its pid to a file in a loop. ``killpg`` cannot reach that grandchild (another session);
a per-run cgroup can. Where the host has no usable cgroup v2 the test is skipped, since the
fallback (the process group) does not promise this (docs/reliability.md, case 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from ipfailover.shell import cgroups
from ipfailover.shell import scripts as hooks
from ipfailover.shell.scripts import Phase, ScriptFolder, Status

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or cgroups.base() is None, reason="needs root and a cgroup v2 hierarchy"
)

ESCAPING = r"""#!/bin/sh
trap '' TERM HUP
setsid sh -c '
  trap "" TERM HUP
  sh -c "trap \"\" TERM HUP; while :; do echo \$\$ >> \"$1/beat\"; sleep 0.02; done" &
  echo $! > "$1/grandchild.pid"
  echo $$ > "$1/child.pid"
  while :; do sleep 1; done
' escaper "$PWD" &
while :; do sleep 1; done
"""


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pids(folder: Path) -> list[int]:
    found = []
    for name in ("child.pid", "grandchild.pid"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found.append(int((folder / name).read_text()))
    return found


def test_a_script_that_escapes_with_setsid_is_killed_on_its_timeout(tmp_path: Path) -> None:
    folder = tmp_path / "scripts"
    folder.mkdir()
    script = folder / "PreAcq1"
    script.write_text(ESCAPING)
    script.chmod(0o755)
    try:
        res = asyncio.run(
            ScriptFolder(folder, timeout=1.0, enforce=True).run(
                hooks.Script(script, Phase.PRE_ACQ), {}
            )
        )
        assert isinstance(res, hooks.ScriptResult)
        assert res.status is Status.TIMEOUT
        pids = _pids(folder)
        assert len(pids) == 2, "the script did not get as far as escaping"
        deadline = time.monotonic() + 3.0
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [p for p in pids if pid_alive(p)]
        assert not survivors, f"escaped with setsid and survived the timeout: {survivors}"
        size = (folder / "beat").stat().st_size
        time.sleep(0.2)
        assert (folder / "beat").stat().st_size == size, "something still writes the beat file"
        base = cgroups.base()
        assert base is not None
        ours = f"{cgroups.PREFIX}{os.getpid()}-"
        left = [p for p in base.iterdir() if p.name.startswith(ours)]
        assert not left, f"the script's cgroup was not removed: {left}"
    finally:
        for pid in _pids(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # the beat writer's pid is also in the file it writes
        with contextlib.suppress(FileNotFoundError, ValueError):
            for line in set((folder / "beat").read_text().split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line), signal.SIGKILL)


def test_what_a_script_leaves_running_on_purpose_survives_and_the_cgroup_goes(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "scripts"
    folder.mkdir()
    script = folder / "PostAcq1"
    script.write_text("#!/bin/sh\nsetsid sleep 30 > /dev/null 2>&1 & echo $! > bg.pid\nexit 0\n")
    script.chmod(0o755)
    try:
        res = asyncio.run(
            ScriptFolder(folder, timeout=10, enforce=True).run(
                hooks.Script(script, Phase.POST_ACQ), {}
            )
        )
        assert isinstance(res, hooks.ScriptResult) and res.status is Status.OK
        pid = int((folder / "bg.pid").read_text())
        assert pid_alive(pid)  # a service a PostAcq script started keeps running
        with open(f"/proc/{pid}/cgroup") as f:
            assert cgroups.PREFIX not in f.read()  # moved back to the daemon's cgroup
    finally:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(int((folder / "bg.pid").read_text()), signal.SIGKILL)


def test_the_program_is_in_its_cgroup_from_the_start(tmp_path: Path) -> None:
    res = asyncio.run(
        hooks.run_program(["/bin/cat", "/proc/self/cgroup"], env={}, cwd="/", timeout=5)
    )
    assert res.exit_code == 0
    assert f"{cgroups.PREFIX}{os.getpid()}-" in res.output
    with open("/proc/self/cgroup") as f:
        assert cgroups.PREFIX not in f.read()  # and the daemon went back to its own
