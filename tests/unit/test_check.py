"""`ipfailover check`: one precise line per problem, touching nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ipfailover import cli


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    assert cli.main(["keygen", str(path)]) == 0
    return path


ONE_NETWORK = "failoverd watches one network only"


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status and output lines, less the one-network warning every config on `lo` gets."""
    cfg = tmp_path / "hostconfig"
    cfg.write_text(text)
    code = cli.main(["check", "--config", str(cfg)])
    return code, [x for x in capsys.readouterr().out.splitlines() if ONE_NETWORK not in x]


def test_valid_primary(tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(
        tmp_path, f'FAILOVER_BCAST_IPS="203.0.113.255"\nFAILOVER_KEY_FILE="{key}"\n', capsys
    )
    assert code == 0 and out == [f"ok: {tmp_path}/hostconfig is valid for heartbeatd"]


def test_every_config_error_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(tmp_path, 'FAILOVER_PORT="0"\nFAILOVER_PEER_IPP="1"\n', capsys)
    assert code == 2
    assert out[0].startswith(f"error: {tmp_path}/hostconfig:1: FAILOVER_PORT:")
    assert out[1].startswith(f"error: {tmp_path}/hostconfig:2: FAILOVER_PEER_IPP:")


def test_missing_interface_and_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "badkey"
    bad.write_text("00\n")
    bad.chmod(0o600)
    code, out = check(
        tmp_path,
        'FAILOVER_PEER_IP="203.0.113.10"\n'
        'FAILOVER_PEER_IP_PAIRS="nosuch0:203.0.113.10"\n'
        f'FAILOVER_KEY_FILE="{bad}"\n',
        capsys,
    )
    assert code == 2
    assert any("FAILOVER_KEY_FILE" in line and "bits" in line for line in out)
    assert (
        f"error: {tmp_path}/hostconfig:2: FAILOVER_PEER_IP_PAIRS: no such interface: nosuch0" in out
    )


def test_off_subnet_pair_and_unsafe_script_are_warnings(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "scripts" / "192.0.2.10"
    folder.mkdir(parents=True, mode=0o755)
    (tmp_path / "scripts").chmod(0o755)
    script = folder / "PostAcq10.start"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o777)
    (folder / "PreRel10.notexec").write_text("#!/bin/sh\n")
    code, out = check(
        tmp_path,
        'FAILOVER_PEER_IP="192.0.2.10"\nFAILOVER_PEER_IP_PAIRS="lo:192.0.2.10"\n'
        f'FAILOVER_KEY_FILE="{key}"\nFAILOVER_SCRIPT_DIR="{tmp_path}/scripts"\n',
        capsys,
    )
    assert code == 1, out
    assert any("lo:192.0.2.10" in line and "/32" in line for line in out)
    assert any(str(script) in line and "writable" in line for line in out)
    assert any("PreRel10.notexec is not executable" in line for line in out)
    assert all(line.startswith("warning: ") for line in out)


def test_an_unsafe_test_script_is_an_error_since_every_takeover_would_be_declined(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "scripts" / "192.0.2.10"
    folder.mkdir(parents=True, mode=0o755)
    (tmp_path / "scripts").chmod(0o755)
    test = folder / "Test"
    test.write_text("#!/bin/sh\nexit 0\n")
    test.chmod(0o757)
    text = (
        'FAILOVER_PEER_IP="192.0.2.10"\nFAILOVER_PEER_IP_PAIRS="lo:192.0.2.10/32"\n'
        f'FAILOVER_KEY_FILE="{key}"\nFAILOVER_SCRIPT_DIR="{tmp_path}/scripts"\n'
    )
    code, out = check(tmp_path, text, capsys)
    assert code == 2, out
    assert out == [
        f"error: {tmp_path}/hostconfig:4: FAILOVER_SCRIPT_DIR: script {test} is writable by others "
        f"(mode 0757) (fix: chown root {test} && chmod go-w {test}); it will be refused, and a "
        "refused Test declines every takeover: failover is off until this is fixed"
    ]
    test.chmod(0o755)
    folder.chmod(0o775)  # now the folder is unsafe: Test is refused with everything in it
    code, out = check(tmp_path, text, capsys)
    assert code == 2 and len(out) == 1, out
    assert f"folder {folder} is writable by group" in out[0]
    assert out[0].startswith("error: ") and "declines every takeover" in out[0]
    test.unlink()  # without a Test, an unsafe folder only costs the other scripts: a warning
    (folder / "PostAcq10.start").write_text("#!/bin/sh\n")
    (folder / "PostAcq10.start").chmod(0o755)
    code, out = check(tmp_path, text, capsys)
    assert code == 1 and out[0].startswith("warning: ") and "no script in it will run" in out[0]


def run_check(
    config_file: Path, *, block: str = "", prefix: tuple[str, ...] = ()
) -> tuple[int, str]:
    """`ipfailover check` in a child process, with module ``block`` made unimportable."""
    code = (
        "import sys\n"
        + (f"sys.modules[{block!r}] = None\n" if block else "")
        + "from ipfailover import cli\n"
        + f"sys.exit(cli.main(['check', '--config', {str(config_file)!r}]))\n"
    )
    res = subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    return res.returncode, res.stdout + res.stderr


def test_metrics_need_prometheus_client_and_check_binds_no_port(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (
        f'FAILOVER_BCAST_IPS="203.0.113.255"\nFAILOVER_KEY_FILE="{key}"\n'
        f'FAILOVER_HEARTBEAT_METRICS="127.0.0.1:{port}"\nFAILOVER_METRICS="127.0.0.1:{port}"\n'
    )
    code, out = check(tmp_path, text, capsys)
    assert code == 0, out
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free: check did not listen on it
    code, output = run_check(tmp_path / "hostconfig", block="prometheus_client")
    assert code == 2, output
    # only heartbeatd is configured, so only its variable is checked
    assert output.splitlines() == [
        f"error: {tmp_path}/hostconfig:3: FAILOVER_HEARTBEAT_METRICS: needs prometheus-client: "
        "pip install 'ipfailover[metrics]'"
    ]


def test_the_run_directory_must_be_creatable(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    base = f'FAILOVER_BCAST_IPS="203.0.113.255"\nFAILOVER_KEY_FILE="{key}"\n'
    code, out = check(tmp_path, base + f'FAILOVER_RUN_DIR="{tmp_path}/file/run"\n', capsys)
    assert code == 2
    assert out == [
        f"error: {tmp_path}/hostconfig:3: FAILOVER_RUN_DIR: {tmp_path}/file is not a directory"
    ]
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (tmp_path / "hostconfig").write_text(base + f'FAILOVER_RUN_DIR="{readonly}/ipfailover"\n')
    # a read-only file system, mounted in a private mount namespace of the child only
    mount = f'mount -t tmpfs -o ro,size=64k none {readonly} && exec "$0" "$@"'
    code, output = run_check(tmp_path / "hostconfig", prefix=("unshare", "-m", "sh", "-c", mount))
    assert code == 2, output
    assert output.splitlines() == [
        f"error: {tmp_path}/hostconfig:3: FAILOVER_RUN_DIR: cannot create {readonly}/ipfailover: "
        f"{readonly} is not writable by uid 0"
    ]
    assert not any(readonly.iterdir())  # the mount was the child's alone
