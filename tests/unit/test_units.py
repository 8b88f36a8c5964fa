"""The systemd units: they verify with systemd-analyze, start on Apple's conditions, install."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipfailover.tools import units

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging" / "systemd"
BIN = Path(sys.executable).parent


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: run scripts/setup (it installs the systemd package)"
    return tool


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hostconfig"
    path.write_text(text)
    return str(path)


# The unit files ---------------------------------------------------------------------------------


def test_shipped_units_are_the_packaging_files() -> None:
    for name in units.UNIT_NAMES:
        assert units.shipped_unit(name) == (PACKAGING / name).read_text()


def test_units_verify_with_systemd_analyze(tmp_path: Path) -> None:
    written = units.install_units(BIN, tmp_path)
    paths = [str(w.path) for w in written]
    res = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    # systemd-analyze also reports on unrelated units of the host; none may concern ours.
    marks = (str(tmp_path), "heartbeatd", "failoverd")
    ours = [line for line in output.splitlines() if any(m in line for m in marks)]
    assert ours == [], output


@pytest.mark.parametrize(
    ("name", "role"), [("heartbeatd.service", "heartbeatd"), ("failoverd.service", "failoverd")]
)
def test_units_run_their_daemon_with_condition_watchdog_and_reload(name: str, role: str) -> None:
    settings = settings_of(units.render_unit(units.shipped_unit(name), BIN))
    config = "--config ${IPFAILOVER_CONFIG}"
    assert settings["ExecCondition"] == [f"+{BIN}/ipfailover condition {role} {config}"]
    assert settings["ExecStart"] == [f"{BIN}/{role} {config}"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["WatchdogSec"] == ["10s"]
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert settings["RuntimeDirectory"] == ["ipfailover"]
    assert settings["RuntimeDirectoryMode"] == ["0700"]


def settings_of(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_render_rewrites_only_our_programs() -> None:
    text = (
        "ExecStart=/usr/local/bin/failoverd --config x\n"
        "ExecStartPre=+/usr/bin/install -d /var/spool/ipfailover\n"
        "ExecCondition=+/usr/local/bin/ipfailover condition failoverd\n"
        "ExecStopPost=/usr/local/bin/failoverd-helper\n"
        "# ExecStart=/usr/local/bin/heartbeatd in a comment\n"
    )
    assert units.render_unit(text, Path("/opt/ipfailover/bin")) == (
        "ExecStart=/opt/ipfailover/bin/failoverd --config x\n"
        "ExecStartPre=+/usr/bin/install -d /var/spool/ipfailover\n"
        "ExecCondition=+/opt/ipfailover/bin/ipfailover condition failoverd\n"
        "ExecStopPost=/usr/local/bin/failoverd-helper\n"
        "# ExecStart=/usr/local/bin/heartbeatd in a comment\n"
    )


@pytest.mark.parametrize("bad", ["relative/bin", "/opt/my venv/bin", "/opt/%h/bin", "/opt/$X"])
def test_render_refuses_paths_systemd_would_mangle(bad: str) -> None:
    with pytest.raises(units.InstallError, match="absolute path without whitespace"):
        units.render_unit("ExecStart=/usr/local/bin/heartbeatd\n", Path(bad))


# The start condition ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "heartbeatd", "failoverd"),
    [
        ("", units.SKIP, units.SKIP),
        ('FAILOVER_BCAST_IPS="192.0.2.255 198.51.100.255"\n', units.RUN, units.SKIP),
        ('FAILOVER_PEER_IP="192.0.2.10"\n', units.SKIP, units.SKIP),
        (
            'FAILOVER_PEER_IP="192.0.2.10"\nFAILOVER_PEER_IP_PAIRS="eth0:192.0.2.10"\n',
            units.SKIP,
            units.RUN,
        ),
        (  # peering: both roles on one host
            'FAILOVER_BCAST_IPS="192.0.2.255"\nFAILOVER_PEER_IP="198.51.100.20"\n'
            'FAILOVER_PEER_IP_PAIRS="eth0:198.51.100.20"\n',
            units.RUN,
            units.RUN,
        ),
        ('FAILOVER_BCAST_IPS=""\nHOSTNAME=-AUTOMATIC-\n', units.SKIP, units.SKIP),
    ],
)
def test_condition_follows_apples_startup_item(
    tmp_path: Path, text: str, heartbeatd: int, failoverd: int
) -> None:
    path = write(tmp_path, text)
    assert units.condition("heartbeatd", path) == heartbeatd
    assert units.condition("failoverd", path) == failoverd


def test_condition_skip_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, 'FAILOVER_PEER_IP="192.0.2.10"\n')
    assert units.condition("failoverd", path) == units.SKIP
    err = capsys.readouterr().err
    assert err == f"failoverd not started: FAILOVER_PEER_IP_PAIRS not set in {path}\n"


@pytest.mark.parametrize("text", ["FAILOVER_INTERVALL=2\n", 'FAILOVER_BCAST_IPS="192.0.2.999"\n'])
def test_condition_lets_a_broken_config_start_so_it_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = write(tmp_path, text)
    assert units.condition("heartbeatd", path) == units.RUN
    assert units.condition("failoverd", path) == units.RUN
    assert "has errors; starting" in capsys.readouterr().err


def test_condition_unreadable_config_starts_the_daemon(tmp_path: Path) -> None:
    assert units.condition("heartbeatd", str(tmp_path / "missing")) == units.RUN


def test_condition_command_line(tmp_path: Path) -> None:
    """The exit status systemd sees, through the parser the CLI registers."""
    parser = argparse.ArgumentParser(prog="ipfailover condition")
    units.configure_condition_parser(parser)
    path = write(tmp_path, 'FAILOVER_BCAST_IPS="192.0.2.255"\n')
    assert units.run_condition(parser.parse_args(["heartbeatd", "--config", path])) == 0
    assert units.run_condition(parser.parse_args(["failoverd", "--config", path])) == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["keepalived"])


# Installing -------------------------------------------------------------------------------------


def install_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ipfailover install-units")
    units.configure_install_parser(parser)
    return parser.parse_args(list(argv))


def test_install_writes_both_units_pointing_at_this_installation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert units.run_install(install_args("--dest", str(tmp_path))) == 0
    for name in units.UNIT_NAMES:
        path = tmp_path / name
        assert path.stat().st_mode & 0o777 == 0o644
        text = path.read_text()
        assert f"ExecStart={BIN}/{name.removesuffix('.service')} " in text
        assert not [x for x in text.splitlines() if x.startswith("Exec") and "/usr/local/" in x]
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'heartbeatd.service'}" in out
    assert "systemctl daemon-reload" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(units.UNIT_NAMES)  # no temp files


def test_install_again_reports_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert units.run_install(install_args("--dest", str(tmp_path))) == 0
    capsys.readouterr()
    assert units.run_install(install_args("--dest", str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"unchanged {tmp_path / name}" for name in units.UNIT_NAMES]


def test_install_replaces_a_stale_unit(tmp_path: Path) -> None:
    (tmp_path / "failoverd.service").write_text("[Service]\nExecStart=/old/failoverd\n")
    written = units.install_units(BIN, tmp_path)
    assert [w.changed for w in written] == [True, True]
    assert f"ExecStart={BIN}/failoverd" in (tmp_path / "failoverd.service").read_text()


def test_dry_run_prints_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert units.run_install(install_args("--dest", str(tmp_path), "--dry-run")) == 0
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert f"would write {tmp_path / 'failoverd.service'}:" in out
    assert f"ExecStart={BIN}/failoverd --config" in out


def test_install_refuses_a_bin_dir_without_the_programs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = install_args("--dest", str(tmp_path), "--bin-dir", str(tmp_path))
    assert units.run_install(args) == 2
    err = capsys.readouterr().err
    assert "no executable heartbeatd, failoverd, ipfailover" in err
    assert list(tmp_path.iterdir()) == []


def test_install_refuses_a_missing_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert units.run_install(install_args("--dest", str(tmp_path / "nope"))) == 2
    assert "not a directory" in capsys.readouterr().err


def test_protect_home_paths_are_recognised() -> None:
    assert units.protected_home(Path("/home/admin/venv/bin"))
    assert units.protected_home(Path("/root/.venv/bin"))
    assert not units.protected_home(Path("/opt/ipfailover/bin"))
    assert not units.protected_home(Path("/homely/bin"))
