"""Every command against broken input: one line saying what to fix, the documented exit status,
and never a Python traceback (issue 11: "No tracebacks, ever").

Each case runs the installed console script as a child process, as systemd would, so that
nothing in the test process (logging set-up, capsys) can hide a crash. Cases marked ``nobody``
run as uid/gid 65534 (setpriv), the non-root user of the issue.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
NOBODY = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")


@dataclass(frozen=True)
class World:
    """A directory that uid 65534 can traverse, with good and broken files in it."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def config(self, name: str, **variables: str) -> Path:
        """A config for both roles (peering on lo), with FAILOVER_<name>=value overrides."""
        values = {
            "BCAST_IPS": "192.0.2.255",
            "PEER_IP": "192.0.2.1",
            "PEER_IP_PAIRS": "lo:192.0.2.10/32",
            "KEY_FILE": str(self / "key"),
            "RUN_DIR": str(self / "run"),
            "SPOOL_DIR": str(self / "spool"),
            "SCRIPT_DIR": str(self / "scripts"),
        }
        values.update(variables)
        path = self / name
        path.write_text("".join(f'FAILOVER_{k}="{v}"\n' for k, v in values.items() if v))
        path.chmod(0o644)
        return path


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="ipfailover-broken-", dir="/tmp"))
    root.chmod(0o755)
    w = World(root)
    try:
        subprocess.run([BIN / "ipfailover", "keygen", str(w / "key")], check=True, timeout=30)
        (w / "key-open").write_bytes((w / "key").read_bytes())
        (w / "key-open").chmod(0o644)
        (w / "key-garbage").write_text("not a key\n")
        (w / "key-garbage").chmod(0o600)
        (w / "key-link").symlink_to(w / "key")
        (w / "key-dir").mkdir()
        (w / "nobody-key").write_bytes((w / "key").read_bytes())
        os.chown(w / "nobody-key", 65534, 65534)
        (w / "nobody-key").chmod(0o600)
        (w / "a-file").write_text("")
        (w / "nobody-run").mkdir()
        os.chown(w / "nobody-run", 65534, 65534)
        (w / "nobody-run").chmod(0o700)  # the daemons refuse a run dir open to others
        os.mkfifo(w / "fifo")
        big = w / "big"
        big.write_bytes(b'FAILOVER_BCAST_IPS="192.0.2.255"\n' + b"#" * (1 << 20))
        (w / "secret").write_text('FAILOVER_BCAST_IPS="192.0.2.255"\n')
        (w / "secret").chmod(0o600)
        (w / "garbage").write_bytes(b'FAILOVER_NODE_NAME="\xff\xfe"\n\x00\x01FAILOVER_\n')
        yield w
    finally:
        shutil.rmtree(root)


@dataclass(frozen=True)
class Case:
    """``argv`` with ``{w}`` for the world's directory and ``{c}`` for a config file built
    from ``variables`` (or the world file ``config`` names)."""

    argv: str
    status: int
    variables: tuple[tuple[str, str], ...] = ()
    config: str = ""
    nobody: bool = False
    says: str = ""  # a fragment the one line must contain


def case(
    argv: str,
    status: int,
    *,
    says: str = "",
    config: str = "",
    nobody: bool = False,
    **variables: str,
) -> Case:
    return Case(argv, status, tuple(variables.items()), config, nobody, says)


DAEMONS = ("heartbeatd", "failoverd")
CONFIG_USERS = (*DAEMONS, "ipfailover check", "ipfailover status")

CASES: dict[str, Case] = {}
for cmd in CONFIG_USERS:
    CASES |= {
        f"{cmd}: missing config": case(f"{cmd} --config {{w}}/nosuch", 2, says="No such file"),
        f"{cmd}: config is a directory": case(f"{cmd} --config {{w}}", 2, says="directory"),
        f"{cmd}: config is /dev/zero": case(f"{cmd} --config /dev/zero", 2, says="device"),
        f"{cmd}: config is a FIFO": case(f"{cmd} --config {{w}}/fifo", 2, says="FIFO"),
        f"{cmd}: config over 1 MiB": case(f"{cmd} --config {{w}}/big", 2, says="1024 KiB"),
        f"{cmd}: config not UTF-8": case(f"{cmd} --config {{w}}/garbage", 2, says="UTF-8"),
        f"{cmd}: unknown variable": case(
            f"{cmd} --config {{c}}", 2, says="did you mean", PEEER="x"
        ),
        f"{cmd}: bad interval": case(
            f"{cmd} --config {{c}}", 2, says="not a number", INTERVAL="1s"
        ),
        f"{cmd}: metrics port alone": case(
            f"{cmd} --config {{c}}", 2, says="host:port", HEARTBEAT_METRICS="9694", METRICS="9100"
        ),
        f"{cmd}: a command in a value": case(
            f"{cmd} --config {{c}}", 2, says="not allowed", NODE_NAME="`hostname`"
        ),
        f"{cmd}: unreadable config, as nobody": case(
            f"{cmd} --config {{w}}/secret", 2, says="Permission denied", nobody=True
        ),
    }
for cmd in (*DAEMONS, "ipfailover check"):
    CASES |= {
        f"{cmd}: key missing": case(f"{cmd} --config {{c}}", 2, says="keygen", KEY_FILE="{w}/no"),
        f"{cmd}: key readable by others": case(
            f"{cmd} --config {{c}}", 2, says="chmod 600", KEY_FILE="{w}/key-open"
        ),
        f"{cmd}: key is garbage": case(
            f"{cmd} --config {{c}}", 2, says="FAILOVER_KEY_FILE", KEY_FILE="{w}/key-garbage"
        ),
        f"{cmd}: key is a symlink": case(
            f"{cmd} --config {{c}}", 2, says="is a symbolic link", KEY_FILE="{w}/key-link"
        ),
        f"{cmd}: key is a directory": case(
            f"{cmd} --config {{c}}", 2, says="FAILOVER_KEY_FILE", KEY_FILE="{w}/key-dir"
        ),
        f"{cmd}: run dir under a file": case(
            f"{cmd} --config {{c}}", 2, says="FAILOVER_RUN_DIR", RUN_DIR="{w}/a-file/run"
        ),
        f"{cmd}: relative path": case(
            f"{cmd} --config {{c}}", 2, says="absolute path", SPOOL_DIR="spool"
        ),
    }
CASES |= {
    "heartbeatd: as nobody, default run dir": case(
        "heartbeatd --config {c}",
        2,
        says="run as root",
        nobody=True,
        KEY_FILE="{w}/nobody-key",
        RUN_DIR="/run/ipfailover-test-nobody/x",
    ),
    "failoverd: as nobody": case(
        "failoverd --config {c}",
        2,
        says="root",
        nobody=True,
        KEY_FILE="{w}/nobody-key",
        RUN_DIR="{w}/nobody-run",
    ),
    "failoverd: no such interface": case(
        "failoverd --config {c}", 2, says="nosuch0", PEER_IP_PAIRS="nosuch0:192.0.2.10"
    ),
    "ipfailover check: no such interface": case(
        "ipfailover check --config {c}", 2, says="nosuch0", PEER_IP_PAIRS="nosuch0:192.0.2.10"
    ),
    "ipfailover check: configures no daemon": case(
        "ipfailover check --config {c}",
        2,
        says="configures no daemon",
        BCAST_IPS="",
        PEER_IP="",
        PEER_IP_PAIRS="",
    ),
    "ipfailover status: nobody, nothing running": case(
        "ipfailover status --run-dir {w}/run", 3, nobody=True, says="no ipfailover daemon"
    ),
    "ipfailover keygen: parent is a file": case(
        "ipfailover keygen {w}/a-file/key", 2, says="not a directory"
    ),
    "ipfailover keygen: a directory": case("ipfailover keygen {w}/key-dir", 2, says="directory"),
    "ipfailover keygen: exists": case("ipfailover keygen {w}/key", 2, says="--force"),
    "ipfailover keygen: as nobody": case(
        "ipfailover keygen {w}/new/key", 2, says="permission denied", nobody=True
    ),
    "ipfailover process: bad pair": case(
        "ipfailover process acquire nonsense --config {c}", 2, says="interface:address"
    ),
    "ipfailover process: broken config": case(
        "ipfailover process acquire lo:192.0.2.10 --config /dev/zero", 2, says="device"
    ),
    "ipfailover notify: broken config": case(
        "ipfailover notify up 192.0.2.10 --config {w}/fifo", 2, says="FIFO"
    ),
    "ipfailover condition: broken config still runs the daemon": case(
        "ipfailover condition heartbeatd --config {w}/fifo", 0, says="starting heartbeatd"
    ),
    "ipfailover condition: unconfigured role is skipped": case(
        "ipfailover condition failoverd --config {c}",
        1,
        says="not set",
        PEER_IP="",
        PEER_IP_PAIRS="",
    ),
    "ipfailover install-units: no programs there": case(
        "ipfailover install-units --bin-dir {w} --dest {w}", 2, says="no executable"
    ),
    "ipfailover install-units: dest missing": case(
        f"ipfailover install-units --bin-dir {BIN} --dest {{w}}/nosuch", 2, says="not a directory"
    ),
    "ipfailover lab: zero runs": case("ipfailover lab --runs 0", 2, says="--runs"),
    "ipfailover lab: as nobody": case("ipfailover lab", 2, says="root", nobody=True),
    "ipfailover: unknown command": case("ipfailover frobnicate", 2, says="invalid choice"),
    "heartbeatd: unknown option": case("heartbeatd --frobnicate", 2, says="unrecognized"),
}

def params() -> list[object]:
    return [pytest.param(c, id=name) for name, c in CASES.items()]


@pytest.mark.parametrize("c", params())
def test_broken_input_is_one_line_and_the_right_status(world: World, c: Case) -> None:
    argv = c.argv.format(w=world.root, c="{c}").split()
    if "{c}" in argv:
        variables = {k: v.format(w=world.root) for k, v in c.variables}
        path = world.config(f"config-{abs(hash(c))}", **variables)
        argv = [str(path) if a == "{c}" else a for a in argv]
    argv[0] = str(BIN / argv[0])
    res = subprocess.run(
        [*(NOBODY if c.nobody else ()), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    output = res.stdout + res.stderr
    assert "Traceback" not in output, output
    assert res.returncode == c.status, output
    assert c.says in output, output
