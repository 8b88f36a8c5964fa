"""Input the configuration reader must neither drop silently nor hang on (issue 11)."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipfailover.core import config, hostconfig
from ipfailover.core.config import ConfigErrors, load_config, parse_config

GOOD = 'FAILOVER_BCAST_IPS="192.0.2.255"\n'


def errors_of(path: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    return [str(e) for e in info.value.errors]


def test_a_byte_order_mark_does_not_hide_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "hostconfig"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    cfg = load_config(str(path))
    assert [str(a) for a in cfg.bcast_ips] == ["192.0.2.255"]
    assert cfg.line_of("FAILOVER_BCAST_IPS") == 1


def test_lower_case_names_warn() -> None:
    cfg = parse_config(GOOD + "failover_peer_ip=192.0.2.1\nFailover_Port=9\n", "f")
    assert [str(w) for w in cfg.warnings] == [
        "f:2: failover_peer_ip: ignored: shell names are case-sensitive and only FAILOVER_* is "
        "read; write FAILOVER_PEER_IP",
        "f:3: Failover_Port: ignored: shell names are case-sensitive and only FAILOVER_* is "
        "read; write FAILOVER_PORT",
    ]
    assert cfg.peer_ip is None and cfg.port == 1694


def test_a_second_assignment_warns_and_the_last_wins() -> None:
    cfg = parse_config("FAILOVER_PORT=1700\n" + GOOD + "export FAILOVER_PORT=1800\n", "f")
    assert cfg.port == 1800
    assert [str(w) for w in cfg.warnings] == [
        "f:3: FAILOVER_PORT: assigned again; this value replaces the one on line 1"
    ]


def test_no_warnings_for_a_clean_file() -> None:
    assert parse_config(GOOD + "export FAILOVER_BCAST_IPS\nother_failover_x=1\n").warnings == ()


def test_a_file_over_one_mebibyte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(GOOD.encode() + b"#" * config.MAX_SIZE)
    assert errors_of(str(path)) == [f"{path}: is larger than 1024 KiB; is this the right file?"]


def test_a_device_is_refused_without_reading_it() -> None:
    assert errors_of("/dev/zero") == [
        "/dev/zero: is a character device, not a regular file; give the configuration file"
    ]


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    assert stat.S_ISFIFO(path.stat().st_mode)
    assert errors_of(str(path)) == [
        f"{path}: is a FIFO, not a regular file; give the configuration file"
    ]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert errors_of(str(tmp_path)) == [f"{tmp_path}: cannot read: Is a directory"]


def test_a_missing_default_file_suggests_config(tmp_path: Path) -> None:
    if os.path.exists(config.DEFAULT_PATH):
        pytest.skip(f"{config.DEFAULT_PATH} exists on this machine")
    assert errors_of(config.DEFAULT_PATH) == [
        "/etc/hostconfig: cannot read: No such file or directory; give the file with --config PATH"
    ]
    assert errors_of(str(tmp_path / "x")) == [
        f"{tmp_path / 'x'}: cannot read: No such file or directory"
    ]


def message(line: str) -> str:
    with pytest.raises(ConfigErrors) as info:
        parse_config(line + "\n", "f")
    return str(info.value.errors[0])


def test_metrics_without_a_host_says_host_port() -> None:
    assert message("FAILOVER_HEARTBEAT_METRICS=9694") == (
        "f:1: FAILOVER_HEARTBEAT_METRICS: '9694' is a port alone; expected host:port, "
        "e.g. 127.0.0.1:9694 or [::1]:9694"
    )


@pytest.mark.parametrize(
    "line",
    [
        "FAILOVER_NODE_NAME=a;b",
        'FAILOVER_BCAST_IPS="192.0.2.255"; export FAILOVER_BCAST_IPS',
        "FAILOVER_BCAST_IPS=192.0.2.255;",
        "FAILOVER_NODE_NAME=a&&b",
        "FAILOVER_NODE_NAME=a|b",
    ],
)
def test_shell_operators_say_so(line: str) -> None:
    text = message(line)
    assert "the shell ends the assignment there; write one assignment per line" in text, text


def test_quoted_operators_are_plain_characters() -> None:
    assert parse_config('FAILOVER_RUN_DIR="/run/a;b"  # x; y\n').run_dir == "/run/a;b"


@pytest.mark.parametrize("line", ["FAILOVER_NODE_NAME=`host name`", "FAILOVER_NODE_NAME=$(a b)"])
def test_command_substitution_with_spaces_names_the_substitution(line: str) -> None:
    assert "'$' and '`' are not allowed" in message(line)


def test_where_has_no_line_zero() -> None:
    cfg = parse_config(GOOD, "f")
    assert cfg.where("FAILOVER_BCAST_IPS") == "f:1: FAILOVER_BCAST_IPS"
    assert cfg.where("FAILOVER_KEY_FILE") == "f: FAILOVER_KEY_FILE"


def test_forty_thousand_targets_parse() -> None:
    targets = [f"2001:db8::{i:x}" for i in range(1, 40001)]
    cfg = parse_config(f'FAILOVER_BCAST_IPS="{" ".join(targets)}"\n')
    assert len(cfg.bcast_ips) == 40000


@given(st.text(alphabet="ab \t\"'\\#$;", max_size=12))
def test_words_split_as_shlex_does(raw: str) -> None:
    try:
        expected: list[str] | str = shlex.split(raw, comments=True)
    except ValueError:
        expected = "error"
    try:
        got: list[str] | str = hostconfig.split_words(raw)
    except ValueError:
        got = "error"
    assert got == expected
