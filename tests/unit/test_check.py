"""`ipfailover check`: one precise line per problem, touching nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipfailover import cli


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    assert cli.main(["keygen", str(path)]) == 0
    return path


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    cfg = tmp_path / "hostconfig"
    cfg.write_text(text)
    code = cli.main(["check", "--config", str(cfg)])
    return code, capsys.readouterr().out.splitlines()


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
