"""What a local user can reach (docs/safety.md): the key file, FAILOVER_NOTIFY_PROGRAM, the run
and spool directories, spool items, and accept_local. Each unsafe case is refused by start-up
and by `ipfailover check` with one line naming the file and the fix, exit 2, no traceback."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ipfailover import cli, mail
from ipfailover.shell import control
from ipfailover.shell import sysctl as hostconf

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


def refused_everywhere(cfg: Path, expected: str, progs: tuple[str, ...]) -> None:
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
    refused_everywhere(cfg, f"key file {key} {expected}", ("heartbeatd", "failoverd"))


def test_a_symlinked_key_says_so(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link"
    link.symlink_to(key)
    cfg = both_roles(tmp_path, link)
    refused_everywhere(cfg, f"key file {link} is a symbolic link", ("heartbeatd",))


def test_a_fifo_as_key_does_not_hang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    cfg = both_roles(tmp_path, fifo)
    refused_everywhere(cfg, f"key file {fifo} is not a regular file", ())


# --- FAILOVER_NOTIFY_PROGRAM --------------------------------------------------------------------


def program(folder: Path, name: str = "notify") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    path = folder / name
    path.write_text('#!/bin/sh\necho "$(basename "$0") $*"; cat >/dev/null\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p, link: p.chmod(0o777), "{p} (the target of {link}) is writable by group and"),
        (lambda p, link: p.parent.chmod(0o777), "directory {d} (above {link}) is writable by"),
        (lambda p, link: os.chown(p.parent, NOBODY, -1), "directory {d} (above {link}) is owned"),
        (lambda p, link: os.lchown(link, NOBODY, -1), "symbolic link {link} is owned by uid 65534"),
    ],
)
def test_an_unsafe_notify_program_is_refused_by_check_and_failoverd(
    tmp_path: Path, key: Path, change: Any, expected: str
) -> None:
    real = program(tmp_path / "opt" / "bin")
    link = program(tmp_path / "sbin", "unused").parent / "page-oncall"
    link.symlink_to(real)
    cfg = both_roles(tmp_path, key, f'FAILOVER_NOTIFY_PROGRAM="{link}"\n')
    _, out = check(cfg)
    assert not any("NOTIFY" in line for line in out), out  # safe as it is
    change(real, link)
    text = expected.format(p=real, d=real.parent, link=link)
    refused_everywhere(cfg, f"{cfg}:8: FAILOVER_NOTIFY_PROGRAM: {text}", ("failoverd",))


def test_the_notify_program_is_checked_again_and_pinned_at_every_delivery(tmp_path: Path) -> None:
    real = program(tmp_path / "bin")
    item = mail.SpoolItem(
        id="x.json", created=0.0, event="takeover", direction="down", ips=("192.0.2.10",),
        recipients=("root@localhost",), sender="root@example.org", subject="s", message="m",
    )  # fmt: skip
    delivery = mail.ProgramDelivery(str(real), strict=True)
    asyncio.run(delivery.deliver(item))  # safe: delivered
    real.parent.chmod(0o777)
    with pytest.raises(mail.DeliveryError, match=f"refused: directory {real.parent} "):
        asyncio.run(delivery.deliver(item))


# --- the run directory and the spool ------------------------------------------------------------


@pytest.mark.parametrize("variable", ["FAILOVER_RUN_DIR", "FAILOVER_SPOOL_DIR"])
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.chmod(0o755), "is open to group or others (mode 0755) (fix: chmod 700"),
        (lambda d: d.chmod(0o730), "is open to group or others (mode 0730) (fix: chmod 700"),
        (lambda d: os.chown(d, NOBODY, -1), "is owned by uid 65534, not by uid 0"),
    ],
)
def test_a_run_or_spool_directory_not_ours_alone_is_refused(
    tmp_path: Path, key: Path, variable: str, change: Any, expected: str
) -> None:
    cfg = both_roles(tmp_path, key)
    sub = "run" if variable == "FAILOVER_RUN_DIR" else "spool"
    path = tmp_path / sub
    path.mkdir(mode=0o700)
    change(path)
    line = 5 if sub == "run" else 6
    progs = ("heartbeatd", "failoverd") if sub == "run" else ("failoverd",)
    refused_everywhere(cfg, f"{cfg}:{line}: {variable}: {path} {expected}", progs)


def test_the_run_dir_and_spool_refuse_at_use_too(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    assert control.make_run_dir(path) == path  # ours alone: fine
    path.chmod(0o711)
    with pytest.raises(control.UnsafeDirectory, match="open to group or others"):
        control.make_run_dir(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o711  # refused, not silently "repaired"
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    os.chown(spool, NOBODY, -1)
    with pytest.raises(control.UnsafeDirectory, match="owned by uid 65534"):
        mail.Spool(spool).ensure()


def test_a_symbolic_link_planted_in_the_spool_is_not_followed(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = mail.Spool(spool_dir)
    item = mail.SpoolItem(
        id="x", created=0.0, event="takeover", direction="down", ips=("192.0.2.10",),
        recipients=("attacker@example.org",), sender="root@example.org", subject="planted",
        message="Subject: planted\r\n\r\nthe content of a file of their choosing\r\n",
    )  # fmt: skip
    outside = tmp_path / "outside.json"
    outside.write_text(item.to_json())
    name = "00000000000000000001-deadbeef.json"
    spool.ensure()
    (spool_dir / name).symlink_to(outside)
    assert spool.claim(name) is None and spool.read(name) is None
    assert (spool_dir / f"{name}.bad").is_symlink() and name not in spool.ids()
    assert outside.read_text() == item.to_json()  # the target is untouched


# --- accept_local -------------------------------------------------------------------------------


def test_accept_local_is_put_back_where_we_turned_it_on_even_after_a_kill(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    for name, value in (("pub0", "0"), ("priv0", "0"), ("eth9", "1")):
        (conf / name).mkdir(parents=True)
        (conf / name / "accept_local").write_text(f"{value}\n")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)

    def value(name: str) -> str:
        return (conf / name / "accept_local").read_text().strip()

    first = hostconf.AcceptLocal(run, conf)
    first.need(["pub0", "eth9"])
    assert (value("pub0"), value("priv0"), value("eth9")) == ("1", "0", "1")
    # failoverd is killed (no restore); the next one learns what the first one changed
    again = hostconf.AcceptLocal(run, conf)
    again.need(["pub0", "priv0", "eth9"])
    again.need(["priv0", "eth9"])  # a reload drops pub0's pair: turned off at once
    assert (value("pub0"), value("priv0"), value("eth9")) == ("0", "1", "1")
    again.restore()
    assert (value("pub0"), value("priv0"), value("eth9")) == ("0", "0", "1")  # eth9 was 1 before
    assert not (run / hostconf.STATE_NAME).exists()


# --- scripts, as `ipfailover check` and failoverd's start-up see them ----------------------------


def test_check_refuses_a_test_script_linked_into_a_directory_others_can_write(
    tmp_path: Path, key: Path
) -> None:
    tools = tmp_path / "srv" / "tools"
    real = program(tools, "veto")
    folder = tmp_path / "scripts" / "192.0.2.10"
    folder.mkdir(parents=True)
    for d in (tmp_path / "scripts", folder):
        d.chmod(0o755)
    (folder / "Test").symlink_to(real)
    cfg = both_roles(tmp_path, key)
    code, out = check(cfg)
    assert code == 0, out
    tools.chmod(0o775)  # a group may now put any program there under that name
    code, out = check(cfg)
    assert code == 2, out
    (line,) = out
    assert line.startswith(f"error: {cfg}:7: FAILOVER_SCRIPT_DIR: script {folder / 'Test'}: ")
    assert f"directory {tools} (above {folder / 'Test'}) is writable by group (mode 0775)" in line
    assert f"(fix: chown root {tools} && chmod go-w {tools})" in line
    assert "a refused Test declines every takeover" in line
