"""``ipfailover check``: everything start-up validates, without touching the network.

One precise line per problem. Problems are *errors* (the daemon refuses to start: config, key,
missing interface, metrics without prometheus-client, a run directory it cannot create; or it
would start but never take over: an unsafe ``Test`` script, which declines every takeover) or
*warnings* (it starts, but something will misbehave: another unsafe script is refused at the
transition, a pair's mask disagrees with the interface's subnet). The daemons run the same
checks when they start and log the warnings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipfailover import mail
from ipfailover.core import config
from ipfailover.shell import control, netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks

DECLINED = "and a refused Test declines every takeover: failover is off until this is fixed"


@dataclass(frozen=True)
class Problem:
    text: str
    fatal: bool

    def __str__(self) -> str:
        return f"{'error' if self.fatal else 'warning'}: {self.text}"


def roles_of(cfg: config.Config) -> list[config.Role]:
    """The roles this configuration asks for (Apple's StartupItem conditions)."""
    out: list[config.Role] = []
    if not config.role_problems(cfg, "heartbeatd"):
        out.append("heartbeatd")
    if not config.role_problems(cfg, "failoverd"):
        out.append("failoverd")
    return out


def _where(cfg: config.Config, variable: str) -> str:
    return cfg.where(variable)


async def pair_problems(cfg: config.Config) -> list[Problem]:
    """Interfaces exist; each pair's address and mask make sense on its interface."""
    out: list[Problem] = []
    where = _where(cfg, "FAILOVER_PEER_IP_PAIRS")
    names = sorted({p.interface for p in cfg.peer_ip_pairs} | set(cfg.networks))
    missing = set(await netif.missing_interfaces(names))
    for name in sorted(missing):
        var = "FAILOVER_NETWORKS" if name in cfg.networks else "FAILOVER_PEER_IP_PAIRS"
        out.append(Problem(f"{_where(cfg, var)}: no such interface: {name}", True))
    addresses: dict[str, list[netif.Assignment]] = {}  # one dump per interface, not per pair
    for pair in cfg.peer_ip_pairs:
        if pair.interface in missing:
            continue
        if pair.interface not in addresses:
            addresses[pair.interface] = await netif.interface_addresses(pair.interface)
        own = addresses[pair.interface]
        nets = [
            ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False)
            for a in own
            if a.address.version == pair.address.version and a.address != pair.address
        ]
        on_link = [n for n in nets if pair.address in n]
        if any(a.address == pair.address for a in own):
            out.append(
                Problem(
                    f"{where}: {pair}: {pair.address} is on {pair.interface} now. Fine if this "
                    "failoverd holds it after a takeover; but if it is this host's own address, "
                    "failoverd will delete it when it hands back: the pairs name the primary's "
                    "address, not the secondary's",
                    False,
                )
            )
        elif pair.prefixlen is None and not on_link:
            host = 32 if pair.address.version == 4 else 128
            out.append(
                Problem(
                    f"{where}: {pair}: no address of {pair.interface} is on a subnet containing "
                    f"{pair.address}; it will be added as /{host} (clients must route to it)",
                    False,
                )
            )
        elif pair.prefixlen is not None and on_link and on_link[0].prefixlen != pair.prefixlen:
            out.append(
                Problem(
                    f"{where}: {pair}: the mask /{pair.prefixlen} differs from {pair.interface}'s "
                    f"subnet {on_link[0]} (Apple's rule: give /32 or nothing on the interface's "
                    "own subnet)",
                    False,
                )
            )
    return out


def script_problems(cfg: config.Config) -> list[Problem]:
    """The script folder and each script: safe (when enforced) and executable.

    A refused script is a warning, except ``Test``: a refused Test declines every takeover,
    which silently disables failover, so that is an error.
    """
    if not cfg.peer_ip_pairs and cfg.peer_ip is None:
        return []
    folder = hooks.script_folder(cfg)
    if not folder.exists():
        return []
    where = _where(cfg, "FAILOVER_SCRIPT_DIR")
    scripts = hooks.ScriptFolder.for_config(cfg, folder)
    enforce = scripts.enforce
    if enforce and (problem := hooks.folder_problem(folder, os.geteuid())):
        if scripts.scripts(hooks.Phase.TEST):
            return [Problem(f"{where}: {problem}; no script in it will run, {DECLINED}", True)]
        return [Problem(f"{where}: {problem}; no script in it will run", False)]
    out: list[Problem] = []
    for phase in hooks.Phase:
        for s in scripts.scripts(phase):
            if s.problem and phase is hooks.Phase.TEST:
                out.append(Problem(f"{where}: {s.problem}; it will be refused, {DECLINED}", True))
            elif s.problem:
                out.append(Problem(f"{where}: {s.problem}; it will be refused", False))
    for entry in sorted(folder.iterdir()):
        prefixed = any(entry.name.startswith(p.value) for p in hooks.Phase)
        if prefixed and entry.is_file() and not os.access(entry, os.X_OK):
            out.append(
                Problem(
                    f"{where}: {entry} is not executable and will not run (chmod 755 it)", False
                )
            )
    return out


def metrics_problems(cfg: config.Config, roles: list[config.Role]) -> list[Problem]:
    """FAILOVER_METRICS (failoverd) and FAILOVER_HEARTBEAT_METRICS (heartbeatd) need
    prometheus-client, as at start-up; the port is not bound here."""
    wanted = [
        variable
        for role, variable, listen in (
            ("failoverd", "FAILOVER_METRICS", cfg.metrics),
            ("heartbeatd", "FAILOVER_HEARTBEAT_METRICS", cfg.heartbeat_metrics),
        )
        if role in roles and listen is not None
    ]
    if not wanted:
        return []
    try:
        from ipfailover.shell import metrics  # noqa: F401  (what start-up imports: it needs prometheus-client)
    except ImportError:
        return [
            Problem(
                f"{_where(cfg, v)}: needs prometheus-client: pip install 'ipfailover[metrics]'",
                True,
            )
            for v in wanted
        ]
    return []


def run_dir_problems(cfg: config.Config) -> list[Problem]:
    """FAILOVER_RUN_DIR (control sockets, failoverd's lock) must exist or be creatable by us."""
    path = Path(cfg.run_dir)
    where = _where(cfg, "FAILOVER_RUN_DIR")
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return [Problem(f"{where}: {existing} is not a directory", True)]
    if os.access(existing, os.W_OK | os.X_OK):
        return []
    what = "" if existing == path else f"cannot create {path}: "
    return [Problem(f"{where}: {what}{existing} is not writable by uid {os.geteuid()}", True)]


def route_to(address: config.IPAddress, port: int) -> tuple[str | None, str | None]:
    """(the source address the kernel would use to reach ``address``, or None; the error).

    A connected UDP socket is the kernel's own route lookup; nothing is sent."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.connect((str(address), port))
            return str(sock.getsockname()[0]).split("%")[0], None
    except OSError as e:
        return None, e.strerror or str(e)


def own_address(address: config.IPAddress) -> bool:
    """Whether ``address`` is one of this host's own (the kernel routes it to itself)."""
    if address.is_loopback:
        return True
    source, _ = route_to(address, 9)
    return source is not None and ipaddress.ip_address(source) == address


def target_problems(cfg: config.Config) -> list[Problem]:
    """FAILOVER_BCAST_IPS: each target must lead off this host, to where a failoverd can be."""
    where = _where(cfg, "FAILOVER_BCAST_IPS")
    out: list[Problem] = []
    # A pair added as a host route (/31, /32, /127, /128) has no link-wide address that
    # heartbeatd could send to instead while this host holds it (heartbeatd.watch_held_targets).
    taken = {
        p.address
        for p in cfg.peer_ip_pairs
        if p.prefixlen is not None and p.prefixlen >= p.address.max_prefixlen - 1
    }
    for target in cfg.bcast_ips:
        if target in taken:
            why = (
                "is also in FAILOVER_PEER_IP_PAIRS as a host address: while this host holds it, "
                "heartbeats to it never leave this host (there is no subnet broadcast to send to "
                "instead), and the returning peer's failoverd reports an anomaly on that network"
            )
        elif target.is_loopback:
            why = "is a loopback address: the heartbeats never leave this host"
        elif target.is_multicast:
            why = (
                "is a multicast group: heartbeatd joins none and picks no interface for it, so "
                "the heartbeats follow the routing table, on one network at most"
            )
        else:
            source, error = route_to(target, cfg.port)
            if error is not None:
                why = f"cannot be reached from this host ({error}): no route to it"
            elif source is not None and ipaddress.ip_address(source) == target:
                why = "is this host's own address: the heartbeats never leave this host"
            else:
                continue
        out.append(
            Problem(
                f"{where}: {target} {why}; give the broadcast address of each network the "
                "secondary is on, or the secondary's address there",
                False,
            )
        )
    return out


async def network_problems(cfg: config.Config) -> list[Problem]:
    """failoverd: FAILOVER_PEER_IP is not ours, and two networks are watched (Apple's rule:
    one network that fails alone must not look like a dead primary)."""
    out: list[Problem] = []
    if cfg.peer_ip is not None and own_address(cfg.peer_ip):
        out.append(
            Problem(
                f"{_where(cfg, 'FAILOVER_PEER_IP')}: {cfg.peer_ip} is this host's own address; "
                "it must be the primary's (the address its heartbeats come from)",
                False,
            )
        )
    with contextlib.suppress(daemon.StartupError):  # a missing interface is reported elsewhere
        networks = await daemon.watched_networks(cfg)
        if len(networks) < 2:
            what = f"one network only ({networks[0]})" if networks else "no network"
            var = "FAILOVER_NETWORKS" if cfg.networks else "FAILOVER_PEER_IP_PAIRS"
            out.append(
                Problem(
                    f"{_where(cfg, var)}: failoverd watches {what}: if that network fails "
                    "while the primary is alive, the secondary takes over too (split brain). "
                    "Connect both machines by a second network, have heartbeatd send on both, "
                    "and list both interfaces in FAILOVER_NETWORKS",
                    False,
                )
            )
    return out


def identity_problems(cfg: config.Config) -> list[Problem]:
    """The node name: the host name must be usable if FAILOVER_NODE_NAME is unset; and a running
    daemon (asked over its control socket) must not be hearing another machine use our name."""
    try:
        daemon.node_name(cfg)
    except daemon.StartupError as e:
        return [Problem(str(e), True)]
    out = []
    for role in control.ROLES:
        try:
            status = control.query(control.socket_path(cfg.run_dir, role), timeout=2.0)
        except (OSError, ValueError):
            continue  # not running here, or not ours to ask
        c = status.get("name_collision")
        if c and c.get("active"):
            out.append(
                Problem(
                    f"{_where(cfg, 'FAILOVER_NODE_NAME')}: the running {role} hears another "
                    f"machine use its node name {c['name']!r} (from {c['source']}): give each "
                    "machine its own FAILOVER_NODE_NAME",
                    False,
                )
            )
    return out


async def problems(cfg: config.Config, roles: list[config.Role]) -> list[Problem]:
    """Everything wrong with ``cfg`` for ``roles``, errors first."""
    out = [Problem(str(e), True) for role in roles for e in config.role_problems(cfg, role)]
    if out:
        return out
    try:
        daemon.load_key(cfg)
    except daemon.StartupError as e:
        out.append(Problem(str(e), True))
    out += [Problem(str(w), False) for w in cfg.warnings]
    out += run_dir_problems(cfg)
    role: config.Role = "failoverd" if "failoverd" in roles else "heartbeatd"
    out += [Problem(text, True) for text in daemon.private_dir_problems(cfg, role)]
    out += identity_problems(cfg)
    out += metrics_problems(cfg, roles)
    if "heartbeatd" in roles:
        out += target_problems(cfg)
    if "failoverd" in roles:
        if problem := mail.notify_program_problem(cfg):
            out.append(Problem(problem, True))
        out += await pair_problems(cfg)
        out += await network_problems(cfg)
        out += script_problems(cfg)
    return sorted(out, key=lambda p: not p.fatal)


def configure_parser(p: argparse.ArgumentParser) -> None:
    config.add_path_argument(p, help="the file to check (default: %(default)s)")
    p.add_argument(
        "--role",
        choices=["heartbeatd", "failoverd"],
        action="append",
        help="check for this daemon (repeatable; default: every role the file configures)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"config", "roles", "ok", "problems": [{"severity", "text"}]} instead',
    )


def run(args: argparse.Namespace) -> int:
    """Exit 0 if nothing is wrong, 1 if there are only warnings, 2 if a daemon would refuse."""
    roles: list[config.Role] = args.role or []
    try:
        cfg = config.load_config(args.config)
    except config.ConfigErrors as errs:
        found = [Problem(str(e), True) for e in errs.errors]
    else:
        roles = roles or roles_of(cfg)
        if not roles:
            found = [
                Problem(
                    f"{cfg.path}: configures no daemon: set FAILOVER_BCAST_IPS (heartbeatd) "
                    "or FAILOVER_PEER_IP and FAILOVER_PEER_IP_PAIRS (failoverd)",
                    True,
                )
            ]
        else:
            found = asyncio.run(problems(cfg, roles))
    code = 2 if any(p.fatal for p in found) else 1 if found else 0
    if getattr(args, "json", False):
        print(json.dumps(as_json(args.config, roles, found, code), indent=2))
        return code
    for p in found:
        print(p)
    if not found:
        print(f"ok: {args.config} is valid for {' and '.join(roles)}")
    return code


def as_json(path: str, roles: list[config.Role], found: list[Problem], code: int) -> dict[str, Any]:
    """``check --json``: the same findings for a program (docs/operations.md)."""
    return {
        "config": path,
        "roles": roles,
        "ok": code == 0,
        "exit_status": code,
        "problems": [
            {"severity": "error" if p.fatal else "warning", "text": p.text} for p in found
        ],
    }
