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
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from . import config, control, daemon, hooks, netif

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
    return f"{cfg.path}:{cfg.line_of(variable) or 0}: {variable}"


async def pair_problems(cfg: config.Config) -> list[Problem]:
    """Interfaces exist; each pair's address and mask make sense on its interface."""
    out: list[Problem] = []
    where = _where(cfg, "FAILOVER_PEER_IP_PAIRS")
    names = sorted({p.interface for p in cfg.peer_ip_pairs} | set(cfg.networks))
    missing = set(await netif.missing_interfaces(names))
    for name in sorted(missing):
        var = "FAILOVER_NETWORKS" if name in cfg.networks else "FAILOVER_PEER_IP_PAIRS"
        out.append(Problem(f"{_where(cfg, var)}: no such interface: {name}", True))
    for pair in cfg.peer_ip_pairs:
        if pair.interface in missing:
            continue
        own = await netif.interface_addresses(pair.interface)
        nets = [
            ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False)
            for a in own
            if a.address.version == pair.address.version and a.address != pair.address
        ]
        on_link = [n for n in nets if pair.address in n]
        if pair.prefixlen is None and not on_link:
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
        from . import metrics  # noqa: F401  (what start-up imports: it needs prometheus-client)
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
    out += run_dir_problems(cfg)
    out += identity_problems(cfg)
    out += metrics_problems(cfg, roles)
    if "failoverd" in roles:
        out += await pair_problems(cfg)
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


def run(args: argparse.Namespace) -> int:
    """Exit 0 if nothing is wrong, 1 if there are only warnings, 2 if a daemon would refuse."""
    try:
        cfg = config.load_config(args.config)
    except config.ConfigErrors as errs:
        for e in errs.errors:
            print(f"error: {e}")
        return 2
    roles: list[config.Role] = args.role or roles_of(cfg)
    if not roles:
        print(
            f"error: {cfg.path}: configures no daemon: set FAILOVER_BCAST_IPS (heartbeatd) "
            "or FAILOVER_PEER_IP and FAILOVER_PEER_IP_PAIRS (failoverd)"
        )
        return 2
    found = asyncio.run(problems(cfg, roles))
    for p in found:
        print(p)
    if not found:
        print(f"ok: {cfg.path} is valid for {' and '.join(roles)}")
        return 0
    return 2 if any(p.fatal for p in found) else 1
