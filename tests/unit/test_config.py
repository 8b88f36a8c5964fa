"""Tests for ipfailover.core.config: hostconfig syntax, validation, located errors."""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import math
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from ipfailover.core.config import (
    TABLE,
    VARIABLES,
    Config,
    ConfigError,
    ConfigErrors,
    IPAddress,
    PeerPair,
    load_config,
    parse_config,
    parse_peer_pair,
    role_problems,
    split_host_port,
)

PATH = "/etc/hostconfig"
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def errors_of(text: str) -> list[ConfigError]:
    """Parse text that must fail and return its errors."""
    with pytest.raises(ConfigErrors) as caught:
        parse_config(text, PATH)
    return caught.value.errors


def one_error(text: str) -> ConfigError:
    errors = errors_of(text)
    assert len(errors) == 1, [str(error) for error in errors]
    return errors[0]


# --------------------------------------------------------------------------- Apple compatibility


def test_apple_guide_lines_parse_unchanged() -> None:
    # Verbatim from Apple's setup guide, including the trailing spaces the guide
    # shows after the secondary's first two lines.  Parsed as text only: no
    # traffic is sent anywhere, so its private example addresses are harmless.
    primary = 'FAILOVER_BCAST_IPS="192.168.0.255 10.0.0.255"\n'
    secondary = (
        'FAILOVER_PEER_IP="10.0.0.100"  \n'
        'FAILOVER_PEER_IP_PAIRS="en0:10.0.0.100"  \n'
        'FAILOVER_EMAIL_RECIPIENT="root@example.org"\n'
    )
    cfg = parse_config(primary + secondary, PATH)
    assert cfg.bcast_ips == (V4("192.168.0.255"), V4("10.0.0.255"))
    assert cfg.peer_ip == V4("10.0.0.100")
    assert cfg.peer_ip_pairs == (
        PeerPair(interface="en0", address=V4("10.0.0.100"), prefixlen=None),
    )
    assert cfg.email_recipients == ("root@example.org",)
    assert role_problems(cfg, "heartbeatd") == []
    assert role_problems(cfg, "failoverd") == []
    assert role_problems(parse_config(primary), "heartbeatd") == []
    assert role_problems(parse_config(secondary), "failoverd") == []


def test_shared_hostconfig_lines_are_ignored_even_if_malformed() -> None:
    text = "\n".join(
        [
            "##",
            "# /etc/hostconfig",
            "##",
            "HOSTNAME=-AUTOMATIC-",
            "AFPSERVER=-YES-",
            'BROKEN="unterminated',
            "garbage ( } ; $(rm -rf /) `x`",
            "failover_port=not-a-number",  # lower case: not ours
            "MY_FAILOVER_PORT=0",
            "  # FAILOVER_PORT=0 commented out",
            "export PATH",
            "\t",
            "FAILOVER_PORT=2000",
            "",
        ]
    )
    cfg = parse_config(text, PATH)
    assert cfg.port == 2000
    assert dict(cfg.lines) == {"FAILOVER_PORT": 13}


def test_non_utf8_bytes_only_matter_on_failover_lines(tmp_path: Path) -> None:
    ok = tmp_path / "ok"
    ok.write_bytes(b"COMPUTERNAME=caf\xe9\nFAILOVER_PORT=1700\n")
    assert load_config(str(ok)).port == 1700

    bad = tmp_path / "bad"
    bad.write_bytes(b"FAILOVER_NODE_NAME=caf\xe9\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(bad))
    assert str(caught.value) == f"{bad}:1: FAILOVER_NODE_NAME: line is not valid UTF-8"


# --------------------------------------------------------------------------- shell syntax


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("FAILOVER_NODE_NAME=alpha", "alpha"),
        ('FAILOVER_NODE_NAME="alpha"', "alpha"),
        ("FAILOVER_NODE_NAME='alpha'", "alpha"),
        ("export FAILOVER_NODE_NAME=alpha", "alpha"),
        ("  \texport\tFAILOVER_NODE_NAME='alpha'", "alpha"),
        ('FAILOVER_NODE_NAME="alpha" # trailing comment', "alpha"),
        ('FAILOVER_NODE_NAME="alpha"# comment right after the quote', "alpha"),
        ("FAILOVER_NODE_NAME=alpha   # comment after whitespace", "alpha"),
        ("FAILOVER_NODE_NAME=al'pha'", "alpha"),
        ("FAILOVER_NODE_NAME=alpha\r", "alpha"),
    ],
)
def test_shell_quoting_and_comments(line: str, expected: str) -> None:
    assert parse_config(line).node_name == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('FAILOVER_KEY_FILE="/al#pha"', "/al#pha"),
        ("FAILOVER_KEY_FILE='/al\"pha'", '/al"pha'),
        ('FAILOVER_KEY_FILE="/al\\"pha"', '/al"pha'),
    ],
)
def test_shell_quoting_inside_values(line: str, expected: str) -> None:
    """(Names may not hold such characters any more; a path may.)"""
    assert parse_config(line).key_file == expected


def test_later_assignment_wins_and_lines_are_recorded() -> None:
    text = "FAILOVER_PORT=not-checked\n\nFAILOVER_PORT=1700\n"
    cfg = parse_config(text, PATH)
    assert cfg.port == 1700
    assert cfg.line_of("FAILOVER_PORT") == 3
    assert cfg.line_of("FAILOVER_INTERVAL") is None


@pytest.mark.parametrize("empty", ['""', "''", "", "   # nothing", '"" # nothing'])
def test_empty_value_means_default(empty: str) -> None:
    cfg = parse_config(f"FAILOVER_PORT=1700\nFAILOVER_PORT={empty}\n")
    assert cfg.port == 1694
    assert cfg.line_of("FAILOVER_PORT") == 2


def test_bare_export_keeps_the_value() -> None:
    cfg = parse_config("FAILOVER_PORT=1700\nexport FAILOVER_PORT # keep\n")
    assert cfg.port == 1700
    assert cfg.line_of("FAILOVER_PORT") == 1


DOLLAR = (
    "'$' and '`' are not allowed: the shell would expand them and we do not; "
    "write the value itself, not a variable or a command"
)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FAILOVER_PORT = 1700", "expected FAILOVER_PORT=value, with no spaces around '='"),
        ("FAILOVER_PORT", "expected FAILOVER_PORT=value, with no spaces around '='"),
        ("FAILOVER_PORT+=1", "expected FAILOVER_PORT=value, with no spaces around '='"),
        ("FAILOVER_PORT= 1700", "space after '='; write NAME=value or NAME=\"value\""),
        (
            "FAILOVER_BCAST_IPS=192.0.2.255 198.51.100.255",
            'unquoted space in the value; quote the whole value: NAME="a b"',
        ),
        (
            'FAILOVER_BCAST_IPS="192.0.2.255',
            "unterminated quote or trailing backslash; the value must be on one line",
        ),
        (
            "FAILOVER_NODE_NAME=node#1",
            "'#' inside an unquoted value; the shell keeps it but this parser would start a "
            "comment there, so quote the value",
        ),
        (
            'FAILOVER_NODE_NAME="node"x#1',
            "'#' inside an unquoted value; the shell keeps it but this parser would start a "
            "comment there, so quote the value",
        ),
        (
            'FAILOVER_KEY_FILE="$HOME/key"',
            DOLLAR,
        ),
        (
            "FAILOVER_NODE_NAME=`hostname`",
            DOLLAR,
        ),
    ],
)
def test_syntax_errors_are_located(line: str, message: str) -> None:
    error = one_error(f"# header\n{line}\n")
    variable = line.split("=")[0].split()[0].rstrip("+")
    assert (error.path, error.line, error.variable, error.message) == (PATH, 2, variable, message)
    assert str(error) == f"{PATH}:2: {variable}: {message}"


# --------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("FAILOVER_INTERVALL", "FAILOVER_INTERVAL"),
        ("FAILOVER_PEER_IPS", "FAILOVER_PEER_IP"),
        ("FAILOVER_EMAIL_RECIPIENTS", "FAILOVER_EMAIL_RECIPIENT"),
        ("FAILOVER_peer_ip", "FAILOVER_PEER_IP"),
        ("FAILOVER_BCAST_IP", "FAILOVER_BCAST_IPS"),
    ],
)
def test_unknown_name_suggests_the_closest(name: str, suggestion: str) -> None:
    error = one_error(f"\n\n{name}=1\n")
    assert str(error) == f"{PATH}:3: {name}: unknown variable; did you mean {suggestion}?"


def test_unknown_name_without_a_close_match() -> None:
    error = one_error("export FAILOVER_ZZZZZZZZZZZZZZZZZZZZ=1")
    assert str(error) == f"{PATH}:1: FAILOVER_ZZZZZZZZZZZZZZZZZZZZ: unknown variable"


# --------------------------------------------------------------------------- every variable


# (variable, value as written, Config field, expected typed value)
SAMPLES: list[tuple[str, str, str, object]] = [
    (
        "FAILOVER_BCAST_IPS",
        "192.0.2.255 2001:db8::ff",
        "bcast_ips",
        (V4("192.0.2.255"), V6("2001:db8::ff")),
    ),
    ("FAILOVER_PEER_IP", "2001:db8::1", "peer_ip", V6("2001:db8::1")),
    (
        "FAILOVER_PEER_IP_PAIRS",
        "eth0:203.0.113.10/24 eth1:2001:db8::10",
        "peer_ip_pairs",
        (
            PeerPair(interface="eth0", address=V4("203.0.113.10"), prefixlen=24),
            PeerPair(interface="eth1", address=V6("2001:db8::10"), prefixlen=None),
        ),
    ),
    (
        "FAILOVER_EMAIL_RECIPIENT",
        "ops@example.org, root@example.org",
        "email_recipients",
        ("ops@example.org", "root@example.org"),
    ),
    ("FAILOVER_PORT", "1700", "port", 1700),
    ("FAILOVER_INTERVAL", "0.25", "interval", 0.25),
    ("FAILOVER_DEADTIME", "4.5", "deadtime", 4.5),
    ("FAILOVER_FAILBACK_DELAY", "0", "failback_delay", 0.0),
    ("FAILOVER_TAKE_ANSWERING", "no", "take_answering", False),
    ("FAILOVER_KEY_FILE", "/etc/ipfailover/other.key", "key_file", "/etc/ipfailover/other.key"),
    ("FAILOVER_SCRIPT_DIR", "/etc/ipfailover/scripts", "script_dir", "/etc/ipfailover/scripts"),
    ("FAILOVER_GARP_COUNT", "3", "garp_count", 3),
    ("FAILOVER_GARP_INTERVAL", "0.5", "garp_interval", 0.5),
    ("FAILOVER_NODE_NAME", "node_b.example-1", "node_name", "node_b.example-1"),
    ("FAILOVER_PEER_NAME", "node-a", "peer_name", "node-a"),
    ("FAILOVER_NETWORKS", "eth0 eth1", "networks", ("eth0", "eth1")),
    ("FAILOVER_SCRIPT_TIMEOUT", "0.5", "script_timeout", 0.5),
    ("FAILOVER_SCRIPT_STRICT", "No", "script_strict", False),
    ("FAILOVER_SMTP_SERVER", "mail.example.org", "smtp_server", "mail.example.org:25"),
    ("FAILOVER_SMTP_STARTTLS", "TRUE", "smtp_starttls", True),
    (
        "FAILOVER_SMTP_CREDENTIALS_FILE",
        "/etc/ipfailover/smtp",
        "smtp_credentials_file",
        "/etc/ipfailover/smtp",
    ),
    (
        "FAILOVER_NOTIFY_PROGRAM",
        "/usr/local/bin/page-me",
        "notify_program",
        "/usr/local/bin/page-me",
    ),
    ("FAILOVER_SPOOL_DIR", "/var/tmp/spool", "spool_dir", "/var/tmp/spool"),
    ("FAILOVER_RUN_DIR", "/run/failover-test", "run_dir", "/run/failover-test"),
    ("FAILOVER_METRICS", "[2001:DB8::1]:9100", "metrics", "[2001:db8::1]:9100"),
    ("FAILOVER_HEARTBEAT_METRICS", "127.0.0.1:9695", "heartbeat_metrics", "127.0.0.1:9695"),
]


def test_one_table_gives_the_fields_their_defaults_and_the_known_names() -> None:
    defaults = Config(path=PATH)
    assert tuple(row.name for row in TABLE) == VARIABLES
    assert VARIABLES[:4] == (  # Apple's four first
        "FAILOVER_BCAST_IPS", "FAILOVER_PEER_IP", "FAILOVER_PEER_IP_PAIRS",
        "FAILOVER_EMAIL_RECIPIENT",
    )  # fmt: skip
    for row in TABLE:
        assert getattr(defaults, row.field) == row.default, row.name
        assert row.help and "\n" not in row.help, row.name
    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields - {row.field for row in TABLE} == {"path", "lines", "warnings"}


def test_samples_cover_every_variable() -> None:
    assert sorted(name for name, *_ in SAMPLES) == sorted(VARIABLES)
    assert len(set(VARIABLES)) == len(VARIABLES)


@pytest.mark.parametrize(("variable", "value", "attribute", "expected"), SAMPLES)
def test_each_variable_sets_its_field(
    variable: str, value: str, attribute: str, expected: object
) -> None:
    default = getattr(Config(path=PATH), attribute)
    assert expected != default
    cfg = parse_config(f'# first line\n{variable}="{value}"\n', PATH)
    assert getattr(cfg, attribute) == expected
    assert cfg.line_of(variable) == 2
    assert dict(cfg.lines) == {variable: 2}


def test_defaults() -> None:
    cfg = parse_config("", PATH)
    assert cfg == Config(path=PATH)
    assert cfg.bcast_ips == ()
    assert cfg.peer_ip is None
    assert cfg.peer_ip_pairs == ()
    assert cfg.email_recipients == ("root@localhost",)
    assert cfg.port == 1694
    assert cfg.interval == 1.0
    assert cfg.deadtime is None
    assert cfg.effective_deadtime == 3.0
    assert cfg.failback_delay == 3.0
    assert cfg.key_file == "/etc/ipfailover/key"
    assert cfg.script_dir == "/Library/IPFailover"
    assert (cfg.garp_count, cfg.garp_interval) == (5, 0.2)
    assert (cfg.node_name, cfg.peer_name, cfg.networks) == (None, None, ())
    assert (cfg.script_timeout, cfg.script_strict) == (30.0, True)
    assert (cfg.smtp_server, cfg.smtp_starttls) == ("localhost:25", False)
    assert (cfg.smtp_credentials_file, cfg.notify_program, cfg.metrics) == (None, None, None)
    assert (cfg.spool_dir, cfg.run_dir) == ("/var/spool/ipfailover", "/run/ipfailover")


def test_effective_deadtime() -> None:
    assert parse_config("FAILOVER_INTERVAL=0.2").effective_deadtime == pytest.approx(0.6)
    assert parse_config("FAILOVER_INTERVAL=0.2\nFAILOVER_DEADTIME=2").effective_deadtime == 2.0


def test_config_is_frozen_hashable_and_equal_regardless_of_line_numbers() -> None:
    first = parse_config("FAILOVER_PORT=1700\n")
    second = parse_config("\n\n# moved\nFAILOVER_PORT=1700\n")
    assert first == second
    assert hash(first) == hash(second)
    assert first.lines != second.lines
    with pytest.raises(AttributeError):
        first.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.lines["FAILOVER_PORT"] = 9  # type: ignore[index]


# --------------------------------------------------------------------------- value errors


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FAILOVER_BCAST_IPS='192.0.2.255 192.0.2.300'", "'192.0.2.300' is not an IP address"),
        (
            "FAILOVER_BCAST_IPS=192.0.2.255,198.51.100.255",
            "'192.0.2.255,198.51.100.255' is not an IP address (separate addresses with spaces)",
        ),
        ("FAILOVER_BCAST_IPS='192.0.2.255 192.0.2.255'", "'192.0.2.255' is listed twice"),
        ("FAILOVER_BCAST_IPS=0.0.0.0", "'0.0.0.0' is the unspecified address"),
        ("FAILOVER_BCAST_IPS=' '", "no address given"),
        ("FAILOVER_PEER_IP=peer.example.org", "'peer.example.org' is not an IP address"),
        (
            "FAILOVER_PEER_IP='192.0.2.1 192.0.2.2'",
            "'192.0.2.1 192.0.2.2': expected exactly one address",
        ),
        ("FAILOVER_PEER_IP=224.0.0.1", "'224.0.0.1' cannot be a peer's address"),
        ("FAILOVER_PORT=0", "0 is out of range; expected a port number from 1 to 65535"),
        ("FAILOVER_PORT=65536", "65536 is out of range; expected a port number from 1 to 65535"),
        (
            "FAILOVER_PORT=16.94",
            "'16.94' is not a whole number; expected a port number from 1 to 65535",
        ),
        ("FAILOVER_INTERVAL=1s", "'1s' is not a number; expected seconds from 0.01 to 60"),
        ("FAILOVER_INTERVAL=nan", "'nan' is not a number; expected seconds from 0.01 to 60"),
        ("FAILOVER_INTERVAL=inf", "'inf' is not a number; expected seconds from 0.01 to 60"),
        ("FAILOVER_INTERVAL=1e3", "'1e3' is not a number; expected seconds from 0.01 to 60"),
        ("FAILOVER_INTERVAL=0.009", "0.009 is out of range; expected seconds from 0.01 to 60"),
        (
            "FAILOVER_INTERVAL=" + "9" * 400,
            "9" * 400 + " is out of range; expected seconds from 0.01 to 60",
        ),
        ("FAILOVER_DEADTIME=0.5", "must be greater than FAILOVER_INTERVAL (1 s)"),
        ("FAILOVER_DEADTIME=1", "must be greater than FAILOVER_INTERVAL (1 s)"),
        ("FAILOVER_DEADTIME=3601", "3601 is out of range; expected seconds from 0.01 to 3600"),
        ("FAILOVER_FAILBACK_DELAY=-1", "-1 is out of range; expected seconds from 0 to 3600"),
        ("FAILOVER_GARP_COUNT=101", "101 is out of range; expected a count from 1 to 100"),
        (
            "FAILOVER_GARP_COUNT=" + "1" * 5000,
            "1" * 5000 + " is out of range; expected a count from 1 to 100",
        ),
        ("FAILOVER_GARP_INTERVAL=0", "0 is out of range; expected seconds from 0.001 to 10"),
        (
            "FAILOVER_SCRIPT_TIMEOUT=0",
            "0 is out of range; expected seconds greater than 0 and at most 3600",
        ),
        (
            "FAILOVER_SCRIPT_STRICT=maybe",
            "'maybe' is not a yes/no value; expected yes/no, true/false or 1/0",
        ),
        (
            "FAILOVER_SMTP_STARTTLS=on",
            "'on' is not a yes/no value; expected yes/no, true/false or 1/0",
        ),
        ("FAILOVER_KEY_FILE=etc/key", "'etc/key' is not an absolute path; it must start with '/'"),
        (
            "FAILOVER_SCRIPT_DIR=~/scripts",
            "'~/scripts' is not an absolute path; it must start with '/'",
        ),
        ("FAILOVER_RUN_DIR='/run/a\tb'", "'/run/a\\tb' contains control characters"),
        ("FAILOVER_NODE_NAME='node a'", "'node a' has characters other than A-Z a-z 0-9 . _ -"),
        ("FAILOVER_NODE_NAME=nöde", "'nöde' has characters other than A-Z a-z 0-9 . _ -"),
        ("FAILOVER_PEER_NAME='a;b'", "'a;b' has characters other than A-Z a-z 0-9 . _ -"),
        ("FAILOVER_NODE_NAME=" + "a" * 65, "is longer than 64 characters"),
        ("FAILOVER_NETWORKS='eth0 eth0'", "'eth0' is listed twice"),
        (
            "FAILOVER_NETWORKS=a-very-long-ifname",
            "interface name 'a-very-long-ifname' must be 1 to 15 bytes",
        ),
        (
            "FAILOVER_EMAIL_RECIPIENT='root@example.org ops root@@example.org'",
            "'ops', 'root@@example.org': expected user@domain, separated by spaces or commas",
        ),
        ("FAILOVER_EMAIL_RECIPIENT=,", "no address given"),
        (
            "FAILOVER_SMTP_SERVER=mail.example.org:0",
            "0 is out of range; expected a port number from 1 to 65535",
        ),
        (
            "FAILOVER_SMTP_SERVER=mail..example.org",
            "'mail..example.org' is not a host name or IP address",
        ),
        (
            "FAILOVER_SMTP_SERVER=2001:db8::25",
            "put an IPv6 address in brackets: [2001:db8::1]:port",
        ),
        ("FAILOVER_METRICS=192.0.2.1", "a port is required: host:port or [IPv6]:port"),
        ("FAILOVER_METRICS=[2001:db8::1]", "a port is required: host:port or [IPv6]:port"),
        ("FAILOVER_METRICS=192.0.2.300:9100", "'192.0.2.300' is not an IP address"),
        ("FAILOVER_METRICS=:9100", "'' is not a host name or IP address"),
        (
            "FAILOVER_METRICS=[192.0.2.1]:9100",
            "'192.0.2.1' is not an IPv6 address (brackets are for IPv6)",
        ),
        ("FAILOVER_METRICS=[2001:db8::1]9100", "expected [IPv6 address]:port"),
    ],
)
def test_value_errors_name_file_line_and_variable(line: str, message: str) -> None:
    variable = line.split("=", 1)[0]
    error = one_error(f"# header\n\n{line}\n")
    assert str(error) == f"{PATH}:3: {variable}: {message}"


def test_deadtime_is_checked_against_the_configured_interval() -> None:
    error = one_error("FAILOVER_DEADTIME=0.3\nFAILOVER_INTERVAL=0.5\n")
    assert (
        str(error) == f"{PATH}:1: FAILOVER_DEADTIME: must be greater than FAILOVER_INTERVAL (0.5 s)"
    )
    assert parse_config("FAILOVER_INTERVAL=0.1\nFAILOVER_DEADTIME=0.3").deadtime == 0.3


def test_deadtime_is_not_compared_with_an_invalid_interval() -> None:
    errors = errors_of("FAILOVER_INTERVAL=100\nFAILOVER_DEADTIME=0.5\n")
    assert [error.variable for error in errors] == ["FAILOVER_INTERVAL"]


def test_peer_name_must_not_be_our_own_name() -> None:
    error = one_error("FAILOVER_NODE_NAME=b\nFAILOVER_PEER_NAME=b\n")
    assert str(error) == (
        f"{PATH}:2: FAILOVER_PEER_NAME: must differ from FAILOVER_NODE_NAME (that is us)"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.01", 0.01), ("60", 60.0), ("+1", 1.0), (".5", 0.5), ("2.", 2.0)],
)
def test_interval_range_is_inclusive(value: str, expected: float) -> None:
    assert parse_config(f"FAILOVER_INTERVAL={value}").interval == expected


def test_all_errors_are_collected_in_file_order() -> None:
    text = "\n".join(
        [
            "FAILOVER_PORT=0",
            "HOSTNAME=-AUTOMATIC-",
            "FAILOVER_INTERVALL=2",
            'FAILOVER_BCAST_IPS="192.0.2.255 nonsense"',
            "FAILOVER_KEY_FILE=relative",
            "FAILOVER_PEER_IP_PAIRS=eth0",
            "FAILOVER_RUN_DIR='/unterminated",
        ]
    )
    with pytest.raises(ConfigErrors) as caught:
        parse_config(text, PATH)
    assert str(caught.value).splitlines() == [
        f"{PATH}:1: FAILOVER_PORT: 0 is out of range; expected a port number from 1 to 65535",
        f"{PATH}:3: FAILOVER_INTERVALL: unknown variable; did you mean FAILOVER_INTERVAL?",
        f"{PATH}:4: FAILOVER_BCAST_IPS: 'nonsense' is not an IP address",
        f"{PATH}:5: FAILOVER_KEY_FILE: 'relative' is not an absolute path; it must start with '/'",
        f"{PATH}:6: FAILOVER_PEER_IP_PAIRS: eth0: expected interface:address[/mask]",
        f"{PATH}:7: FAILOVER_RUN_DIR: unterminated quote or trailing backslash; "
        "the value must be on one line",
    ]


# --------------------------------------------------------------------------- peer pairs


@pytest.mark.parametrize(
    ("token", "interface", "address", "prefixlen"),
    [
        ("eth0:203.0.113.10", "eth0", V4("203.0.113.10"), None),
        ("eth0:203.0.113.10/24", "eth0", V4("203.0.113.10"), 24),
        ("eth0:203.0.113.10/32", "eth0", V4("203.0.113.10"), 32),
        ("eth0:203.0.113.10/255.255.255.0", "eth0", V4("203.0.113.10"), 24),
        ("eth0:203.0.113.10/255.255.255.255", "eth0", V4("203.0.113.10"), 32),
        ("eth0:203.0.113.10/255.255.254.0", "eth0", V4("203.0.113.10"), 23),
        ("eth0:203.0.113.0/31", "eth0", V4("203.0.113.0"), 31),
        ("bond0.100:2001:db8::10", "bond0.100", V6("2001:db8::10"), None),
        ("eth0:2001:db8::10/64", "eth0", V6("2001:db8::10"), 64),
        ("eth0:[2001:db8::10]", "eth0", V6("2001:db8::10"), None),
        ("eth0:[2001:db8::10]/64", "eth0", V6("2001:db8::10"), 64),
        ("eth0:[2001:DB8:0::10]/128", "eth0", V6("2001:db8::10"), 128),
    ],
)
def test_pair_syntax(token: str, interface: str, address: IPAddress, prefixlen: int | None) -> None:
    expected = PeerPair(interface=interface, address=address, prefixlen=prefixlen)
    assert parse_peer_pair(token) == expected
    assert parse_config(f"FAILOVER_PEER_IP_PAIRS='{token}'").peer_ip_pairs == (expected,)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("eth0", "expected interface:address[/mask]"),
        (":203.0.113.10", "interface name '' must be 1 to 15 bytes"),
        (
            "abcdefghijklmnop:203.0.113.10",
            "interface name 'abcdefghijklmnop' must be 1 to 15 bytes",
        ),
        (
            "eth/0:203.0.113.10",
            "interface name 'eth/0' contains '/', ':', whitespace or a control character",
        ),
        ("..:203.0.113.10", "interface name '..' is not allowed"),
        ("eth0:203.0.113.300", "'203.0.113.300' is not an IP address"),
        ("eth0:203.0.113.10/0", "prefix length /0 is out of range; expected /1 to /32"),
        ("eth0:203.0.113.10/33", "prefix length /33 is out of range; expected /1 to /32"),
        ("eth0:2001:db8::10/129", "prefix length /129 is out of range; expected /1 to /128"),
        ("eth0:203.0.113.10/", "mask '' is not a prefix length or dotted netmask"),
        ("eth0:203.0.113.10/255.0.255.0", "netmask 255.0.255.0 is not contiguous"),
        ("eth0:203.0.113.10/0.0.0.255", "netmask 0.0.0.255 is not contiguous"),
        ("eth0:203.0.113.10/0.0.0.0", "prefix length /0 is out of range; expected /1 to /32"),
        ("eth0:203.0.113.10/255.255.0.256", "mask '255.255.0.256' is not a dotted netmask"),
        ("eth0:2001:db8::10/ffff::", "mask 'ffff::' is not a prefix length"),
        ("eth0:[2001:db8::10]/255.255.255.0", "mask '255.255.255.0' is not a prefix length"),
        ("eth0:[2001:db8::10", "expected interface:[IPv6 address][/prefix]"),
        ("eth0:[2001:db8::10]64", "expected interface:[IPv6 address][/prefix]"),
        ("eth0:[203.0.113.10]", "'203.0.113.10' is not an IPv6 address (brackets are for IPv6)"),
        ("eth0:203.0.113.0/24", "203.0.113.0 is the network address of 203.0.113.0/24"),
        (
            "eth0:203.0.113.255/255.255.255.0",
            "203.0.113.255 is the broadcast address of 203.0.113.0/24",
        ),
        ("eth0:127.0.0.2", "127.0.0.2 is a loopback address and cannot be taken over"),
        ("eth0:0.0.0.0", "0.0.0.0 is a unspecified address and cannot be taken over"),
        ("eth0:ff02::1", "ff02::1 is a multicast address and cannot be taken over"),
        ("eth0:fe80::1", "fe80::1 is a link-local address and cannot be taken over"),
        (
            "eth0:2001:db8::1%eth0",
            "2001:db8::1%eth0: no %zone here; the interface comes before the colon",
        ),
    ],
)
def test_pair_errors(token: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_peer_pair(token)
    assert str(caught.value) == message
    error = one_error(f"FAILOVER_PEER_IP_PAIRS='eth9:203.0.113.99 {token}'")
    assert str(error) == f"{PATH}:1: FAILOVER_PEER_IP_PAIRS: {token}: {message}"


def test_duplicate_pair_addresses_are_an_error() -> None:
    error = one_error('FAILOVER_PEER_IP_PAIRS="eth0:2001:db8::10/64 eth1:[2001:db8::10]"')
    assert str(error) == (
        f"{PATH}:1: FAILOVER_PEER_IP_PAIRS: 2001:db8::10 appears in more than one pair"
    )


def test_every_bad_pair_is_reported() -> None:
    error = one_error("FAILOVER_PEER_IP_PAIRS='eth0:x eth1:203.0.113.1/99'")
    assert error.message == (
        "eth0:x: 'x' is not an IP address; "
        "eth1:203.0.113.1/99: prefix length /99 is out of range; expected /1 to /32"
    )


def test_pair_str() -> None:
    assert str(PeerPair(interface="eth0", address=V4("203.0.113.10"), prefixlen=24)) == (
        "eth0:203.0.113.10/24"
    )
    assert str(PeerPair(interface="eth0", address=V4("203.0.113.10"), prefixlen=None)) == (
        "eth0:203.0.113.10"
    )
    assert str(PeerPair(interface="eth0", address=V6("2001:db8::10"), prefixlen=64)) == (
        "eth0:[2001:db8::10]/64"
    )
    assert str(PeerPair(interface="eth0", address=V6("2001:db8::10"), prefixlen=None)) == (
        "eth0:[2001:db8::10]"
    )


def test_pair_constructor_validates() -> None:
    with pytest.raises(ValueError, match="out of range"):
        PeerPair(interface="eth0", address=V6("2001:db8::10"), prefixlen=0)
    with pytest.raises(ValueError, match="interface name"):
        PeerPair(interface="eth 0", address=V6("2001:db8::10"), prefixlen=None)


# Anything Linux allows in an interface name except the shell's quoting
# characters, so that the name can also sit inside single quotes in a config line.
interface_names = st.text(
    st.characters(
        codec="utf-8",
        categories=["L", "M", "N", "P", "S"],
        exclude_characters="/:'\"#$`\\",
    ),
    min_size=1,
    max_size=15,
).filter(lambda name: len(name.encode()) <= 15 and name not in (".", ".."))
doc_addresses = st.one_of(
    st.ip_addresses(network="192.0.2.0/24"),
    st.ip_addresses(network="198.51.100.0/24"),
    st.ip_addresses(network="203.0.113.0/24"),
    st.ip_addresses(network="2001:db8::/32"),
)


@given(interface_names, doc_addresses, st.one_of(st.none(), st.integers(1, 128)))
def test_pair_round_trips_through_str(
    interface: str, address: IPAddress, prefixlen: int | None
) -> None:
    try:
        pair = PeerPair(interface=interface, address=address, prefixlen=prefixlen)
    except ValueError:
        reject()  # e.g. a prefix longer than an IPv4 address, or a network address
    assert parse_peer_pair(str(pair)) == pair
    assert parse_config(f"FAILOVER_PEER_IP_PAIRS='{pair}'").peer_ip_pairs == (pair,)


# --------------------------------------------------------------------------- host:port


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("localhost", 25, ("localhost", 25)),
        ("mail.example.org.:587", 25, ("mail.example.org.", 587)),
        ("192.0.2.25", 25, ("192.0.2.25", 25)),
        ("[2001:db8::25]", 25, ("2001:db8::25", 25)),
        ("[2001:db8::25]:2525", None, ("2001:db8::25", 2525)),
        ("_smtp-relay:465", None, ("_smtp-relay", 465)),
    ],
)
def test_split_host_port(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert split_host_port(text, default) == expected


def test_smtp_server_is_normalised_to_host_and_port() -> None:
    assert parse_config("FAILOVER_SMTP_SERVER=192.0.2.25").smtp_server == "192.0.2.25:25"
    assert parse_config("FAILOVER_SMTP_SERVER=[2001:db8::25]").smtp_server == "[2001:db8::25]:25"
    assert parse_config("FAILOVER_METRICS=localhost:9100").metrics == "localhost:9100"


# --------------------------------------------------------------------------- files and roles


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "hostconfig"
    path.write_text('HOSTNAME=-AUTOMATIC-\nFAILOVER_BCAST_IPS="192.0.2.255"\n', encoding="utf-8")
    cfg = load_config(str(path))
    assert cfg.path == str(path)
    assert cfg.bcast_ips == (V4("192.0.2.255"),)


def test_load_config_missing_file_is_one_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    [error] = caught.value.errors
    assert (error.path, error.line, error.variable) == (path, 0, "")
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


def test_load_config_directory_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(tmp_path))
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"


def test_load_config_reports_errors_with_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "hostconfig"
    path.write_text("FAILOVER_PORT=x\n", encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}:1: FAILOVER_PORT: ")


def test_config_without_failover_variables_is_valid_but_roles_need_some() -> None:
    cfg = parse_config("HOSTNAME=-AUTOMATIC-\n", PATH)
    assert [str(problem) for problem in role_problems(cfg, "heartbeatd")] == [
        f"{PATH}: FAILOVER_BCAST_IPS is not set; heartbeatd needs it"
    ]
    problems = role_problems(cfg, "failoverd")
    assert [(p.line, p.variable) for p in problems] == [
        (0, "FAILOVER_PEER_IP"),
        (0, "FAILOVER_PEER_IP_PAIRS"),
    ]
    assert str(problems[1]) == f"{PATH}: FAILOVER_PEER_IP_PAIRS is not set; failoverd needs it"


def test_role_problems_for_an_empty_value() -> None:
    cfg = parse_config('FAILOVER_PEER_IP="192.0.2.1"\nFAILOVER_PEER_IP_PAIRS=""\n', PATH)
    assert [p.variable for p in role_problems(cfg, "failoverd")] == ["FAILOVER_PEER_IP_PAIRS"]


# --------------------------------------------------------------------------- properties


def parse_outcome(text: str) -> Config | ConfigErrors:
    """parse_config's result, or its ConfigErrors; any other exception propagates (a bug)."""
    try:
        return parse_config(text, PATH)
    except ConfigErrors as errors:
        return errors


def check_outcome(outcome: Config | ConfigErrors) -> None:
    if isinstance(outcome, ConfigErrors):
        assert outcome.errors
        for error in outcome.errors:
            assert str(error).startswith(f"{PATH}:{error.line}: {error.variable}: ")
            assert error.variable.startswith("FAILOVER_")
    else:
        assert math.isfinite(outcome.interval)
        assert outcome.effective_deadtime > outcome.interval


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_parses_or_raises_config_errors(text: str) -> None:
    check_outcome(parse_outcome(text))


line_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "1",
            "0",
            "-1",
            "1e9",
            "nan",
            "yes",
            "/x",
            "eth0:203.0.113.1/24",
            "[2001:db8::1]:1",
            "2001:db8::1",
            "eth0:[2001:db8::1]/64",
            "a@b",
            "192.0.2.255",
            "'",
            '"',
            "#",
            "\\",
        ]
    ),
)
failover_lines = st.builds(
    lambda export, name, quote, value, tail: f"{export}{name}={quote}{value}{quote}{tail}",
    st.sampled_from(["", "export ", "  "]),
    st.one_of(st.sampled_from(VARIABLES), st.text(max_size=8).map(lambda s: "FAILOVER_" + s)),
    st.sampled_from(["", '"', "'"]),
    line_values,
    st.sampled_from(["", " # c", "#c", " x"]),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(failover_lines, st.text(max_size=20)), max_size=12))
def test_structured_failover_lines_parse_or_raise_config_errors(lines: list[str]) -> None:
    check_outcome(parse_outcome("\n".join(lines)))


# --------------------------------------------------------------------------- the reference doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reference_doc_describes_every_variable_and_its_examples_parse() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for variable in VARIABLES:
        assert re.search(rf"^### `{variable}`", doc, re.MULTILINE), variable
    examples = re.findall(r"^- \*\*Example:\*\* (.*)$", doc, re.MULTILINE)
    assert len(examples) == len(VARIABLES)
    for example in examples:
        for line in re.findall(r"`([^`]+)`", example):
            variable = line.split("=", 1)[0]
            assert parse_config(line).line_of(variable) == 1, line


def test_the_tables_reload_column_is_what_the_operations_guide_says() -> None:
    """docs/operations.md, "Reloading the configuration": the variables it says need a restart
    are those the table marks reload=False."""
    guide = (DOC.parent / "operations.md").read_text(encoding="utf-8")
    section = guide[guide.index("### Reloading the configuration") :]
    flat = " ".join(section[: section.index("\n## ")].split())
    written = re.findall(r"([^.|]*?)\s*\|?\s*need a restart", flat)
    assert len(written) == 2  # failoverd's table row and heartbeatd's paragraph
    named = set()
    for pattern in re.findall(r"FAILOVER_[A-Z_]*\*?", " ".join(written)):
        matches = fnmatch.filter(VARIABLES, pattern)
        assert matches, pattern
        named.update(matches)
    assert named == {row.name for row in TABLE if not row.reload}


def test_reference_doc_code_blocks_parse() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    good = [block for block in blocks if "FAILOVER_INTERVALL" not in block]
    assert len(good) == len(blocks) - 1
    for block in good:
        parse_config(textwrap.dedent(block))


def test_reference_doc_error_example_is_real_output() -> None:
    doc = DOC.read_text(encoding="utf-8")
    found = re.search(
        r"```sh\n(# /etc/hostconfig\n.*?)```\n\nis reported as:\n\n```text\n(.*?)```",
        doc,
        re.DOTALL,
    )
    assert found
    with pytest.raises(ConfigErrors) as caught:
        parse_config(found.group(1), "/etc/hostconfig")
    assert str(caught.value) + "\n" == found.group(2)
