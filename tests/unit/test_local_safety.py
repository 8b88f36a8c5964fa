"""What a local user can reach (docs/safety.md): the key file, FAILOVER_NOTIFY_PROGRAM, the run
and spool directories, spool items, and accept_local. Each unsafe case is refused by start-up
and by `ipfailover check` with one line naming the file and the fix, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipfailover import cli

BIN = Path(sys.executable).parent
NOBODY = 65534


def daemon(prog: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def check(cfg: Path) -> tuple[int, list[str]]:
    """`ipfailover check` as a user runs it (a child process, bounded in time)."""
    res = subprocess.run(
        [str(BIN / "ipfailover"), "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    return res.returncode, res.stdout.splitlines()


def both_roles(tmp_path: Path, key: Path, extra: str = "") -> Path:
    cfg = tmp_path / "hostconfig"
    cfg.write_text(
        'FAILOVER_BCAST_IPS="192.0.2.255"\n'
        f'FAILOVER_KEY_FILE="{key}"\n'
        'FAILOVER_PEER_IP="192.0.2.10"\n'
        'FAILOVER_PEER_IP_PAIRS="lo:192.0.2.10/32"\n'
        f'FAILOVER_RUN_DIR="{tmp_path}/run"\n'
        f'FAILOVER_SPOOL_DIR="{tmp_path}/spool"\n'
        f'FAILOVER_SCRIPT_DIR="{tmp_path}/scripts"\n' + extra
    )
    return cfg


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    assert cli.main(["keygen", str(path)]) == 0
    return path


def refused_everywhere(
    cfg: Path, expected: str, capsys: pytest.CaptureFixture[str], progs: tuple[str, ...]
) -> None:
    """check and each daemon: exit 2, the expected text on one line, no traceback."""
    code, out = check(cfg)
    assert code == 2, out
    assert any(line.startswith("error: ") and expected in line for line in out), out
    for prog in progs:
        res = daemon(prog, cfg)
        assert res.returncode == 2, (prog, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (prog, res.stderr)


# --- the key file ---------------------------------------------------------------------------------


def test_a_key_path_that_is_a_directory_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keydir = tmp_path / "keydir"
    keydir.mkdir(mode=0o700)
    cfg = both_roles(tmp_path, keydir)
    refused_everywhere(
        cfg,
        f"{cfg}:2: FAILOVER_KEY_FILE: key file {keydir} is a directory",
        capsys,
        ("heartbeatd", "failoverd"),
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda k: k.chmod(0o640), "is accessible by group or others (mode 0640); run: chmod 600"),
        (lambda k: k.chmod(0o604), "is accessible by group or others (mode 0604); run: chmod 600"),
        (lambda k: os.chown(k, NOBODY, -1), "is owned by uid 65534, not root; run: chown root"),
    ],
)
def test_a_key_file_others_could_read_or_change_is_refused(
    tmp_path: Path, key: Path, change: object, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    change(key)  # type: ignore[operator]
    cfg = both_roles(tmp_path, key)
    refused_everywhere(cfg, f"key file {key} {expected}", capsys, ("heartbeatd", "failoverd"))


def test_a_symlinked_key_says_so(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link"
    link.symlink_to(key)
    cfg = both_roles(tmp_path, link)
    refused_everywhere(cfg, f"key file {link} is a symbolic link", capsys, ("heartbeatd",))


def test_a_fifo_as_key_does_not_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    cfg = both_roles(tmp_path, fifo)
    refused_everywhere(cfg, f"key file {fifo} is not a regular file", capsys, ())
