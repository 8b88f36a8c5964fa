"""Start-up checks of the real daemons: bad input is reported and exits 2 before any network use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipfailover import cli
from ipfailover.shell import runtime as daemon

BIN = Path(sys.executable).parent


def run(prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), *args], capture_output=True, text=True, timeout=30, check=False
    )


def write(tmp_path: Path, text: str, name: str = "hostconfig") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("prog", ["heartbeatd", "failoverd"])
def test_typo_names_file_line_variable_and_suggests(tmp_path: Path, prog: str) -> None:
    cfg = write(tmp_path, 'HOSTNAME=-AUTOMATIC-\nFAILOVER_INTERVALL="0.5"\n')
    res = run(prog, "--config", str(cfg))
    assert res.returncode == 2
    assert f"{cfg}:2: FAILOVER_INTERVALL:" in res.stderr
    assert "did you mean FAILOVER_INTERVAL" in res.stderr


def test_missing_role_variables_exit_2(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'FAILOVER_BCAST_IPS="203.0.113.255"\n')
    res = run("failoverd", "--config", str(cfg))
    assert res.returncode == 2
    assert "FAILOVER_PEER_IP" in res.stderr


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    assert cli.main(["keygen", str(key)]) == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    os.chmod(key, 0o644)
    cfg = write(tmp_path, f'FAILOVER_BCAST_IPS="203.0.113.255"\nFAILOVER_KEY_FILE="{key}"\n')
    res = run("heartbeatd", "--config", str(cfg))
    assert res.returncode == 2
    assert (
        f"{cfg}:2: FAILOVER_KEY_FILE: key file {key} is accessible by group or others" in res.stderr
    )


def test_missing_key_says_how_to_make_one(tmp_path: Path) -> None:
    cfg = write(
        tmp_path, f'FAILOVER_BCAST_IPS="203.0.113.255"\nFAILOVER_KEY_FILE="{tmp_path}/nokey"\n'
    )
    res = run("heartbeatd", "--config", str(cfg))
    assert res.returncode == 2 and "ipfailover keygen" in res.stderr


def test_pair_on_missing_interface_is_a_startup_error(tmp_path: Path) -> None:
    key = tmp_path / "key"
    cli.main(["keygen", str(key)])
    cfg = write(
        tmp_path,
        f'FAILOVER_PEER_IP="203.0.113.10"\nFAILOVER_PEER_IP_PAIRS="nosuch9:203.0.113.10"\n'
        f'FAILOVER_KEY_FILE="{key}"\n',
    )
    res = run("failoverd", "--config", str(cfg))
    assert res.returncode == 2
    assert f"{cfg}:2: FAILOVER_PEER_IP_PAIRS: no such interface: nosuch9" in res.stderr


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "key"
    assert cli.main(["keygen", str(key)]) == 0
    before = key.read_text()
    assert cli.main(["keygen", str(key)]) == 2
    assert key.read_text() == before
    assert cli.main(["keygen", "--force", str(key)]) == 0
    assert key.read_text() != before


def test_event_lines_are_stable_key_value() -> None:
    line = daemon.format_event("acquire-done", reason="peer-silent", duration=0.0123, note="a b")
    assert line == 'event=acquire-done reason=peer-silent duration=0.012 note="a b"'
