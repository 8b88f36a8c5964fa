"""What both daemons check before touching the network: the command line, the configuration,
the key file, capabilities, the run directory and the node name. Every problem is one line and
exit status 2 (:class:`StartupError`, :func:`run`)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ipfailover import __version__
from ipfailover.core import auth, config, wire
from ipfailover.shell import control
from ipfailover.shell.eventlog import format_event, setup_logging
from ipfailover.shell.snapshot import Snapshot

EXIT_CONFIG = 2
log = logging.getLogger("ipfailover.daemon")


class StartupError(Exception):
    """A problem found before touching the network; printed as is, then exit status 2."""


def start_metrics(
    cfg: config.Config,
    variable: str,
    loop: asyncio.AbstractEventLoop,
    snapshot: Callable[[], Snapshot],
) -> None:
    """Serve metrics where ``variable`` (FAILOVER_METRICS or FAILOVER_HEARTBEAT_METRICS) says,
    if it is set; prometheus-client is only needed when it is."""
    listen = cfg.metrics if variable == "FAILOVER_METRICS" else cfg.heartbeat_metrics
    if listen is None:
        return
    where = cfg.where(variable)
    try:
        from ipfailover.shell import metrics
    except ImportError:
        raise StartupError(
            f"{where}: needs prometheus-client: pip install 'ipfailover[metrics]'"
        ) from None
    try:
        host, port = config.split_host_port(listen, None)
        metrics.serve(host, port, loop, snapshot)
    except OSError as e:
        raise StartupError(f"{where}: cannot listen on {listen}: {e.strerror}") from None


# Start-up --------------------------------------------------------------------------------------


SIGNALS_EPILOG = """signals:
  SIGTERM, SIGINT  stop gracefully ({stop})
  SIGHUP           re-read the configuration; a bad one is logged and the old one kept{hup}

exit status:
  0  stopped on a signal
  1  an unexpected error (a bug: the traceback is in the log; please report it)
  2  a configuration, key, interface or run-directory problem, reported in one line before
     touching the network (the units do not restart it: fix, then start again)
"""


def base_parser(
    prog: str,
    description: str,
    *,
    stop: str = "release what it holds",
    hup: str = "",
    verbose: str = "log every heartbeat decision (DEBUG lines)",
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=SIGNALS_EPILOG.format(stop=stop, hup=hup),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_path_argument(p)
    p.add_argument("--verbose", action="store_true", help=verbose)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def load_role_config(path: str, role: config.Role) -> config.Config:
    """Parse and check the config for ``role``; raise StartupError listing every problem."""
    try:
        cfg = config.load_config(path)
    except config.ConfigErrors as errs:
        raise StartupError(str(errs)) from None
    problems = config.role_problems(cfg, role)
    if problems:
        raise StartupError("\n".join(str(p) for p in problems))
    for warning in cfg.warnings:
        log.warning(format_event("config-warning", problem=str(warning)))
    return cfg


def start_up(
    parser: argparse.ArgumentParser, argv: list[str] | None, role: config.Role
) -> tuple[config.Config, bytes]:
    """What both daemons do first: parse the command line, set up logging, and load and check
    the configuration and the key (a StartupError, exit 2, before touching the network)."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_role_config(args.config, role)
    node_name(cfg)  # a host name that cannot be our name on the wire stops us here
    key = load_key(cfg)
    for problem in private_dir_problems(cfg, role):
        raise StartupError(problem)
    return cfg, key


def private_dir_problems(cfg: config.Config, role: config.Role) -> list[str]:
    """FAILOVER_RUN_DIR (both daemons) and FAILOVER_SPOOL_DIR (failoverd), where they exist,
    must be the daemon's alone (see control.private_dir_problem); one line each."""
    wanted = [("FAILOVER_RUN_DIR", cfg.run_dir)]
    if role == "failoverd":
        wanted.append(("FAILOVER_SPOOL_DIR", cfg.spool_dir))
    out = []
    for variable, path in wanted:
        problem = control.private_dir_problem(Path(path))
        if problem is not None:
            out.append(f"{cfg.where(variable)}: {problem}")
    return out


def load_key(cfg: config.Config) -> bytes:
    """Read FAILOVER_KEY_FILE: a regular file owned by root (or the daemon's user) with no
    group or other permission bits at all (0600 or 0400), not reached through a symbolic link."""
    path = cfg.key_file
    where = cfg.where("FAILOVER_KEY_FILE")
    try:
        # O_NONBLOCK: a FIFO must not hang start-up (it is then refused as not a regular file)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise StartupError(f"{where}: {_key_open_error(path, e)}") from None
    try:
        st = os.fstat(fd)
        problem = _key_file_problem(path, st)
        if problem:
            raise StartupError(f"{where}: {problem}")
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    try:
        return auth.parse_key_text(data.decode("utf-8"))
    except (auth.KeyError_, UnicodeDecodeError) as e:
        raise StartupError(f"{where}: key file {path}: {e}") from None


def _key_file_problem(path: str, st: os.stat_result) -> str | None:
    """Why the opened key file must not be used, with the fix; None if it is fine."""
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        return (
            f"key file {path} is {what}; point FAILOVER_KEY_FILE at the key file itself "
            "(create one with: ipfailover keygen PATH)"
        )
    if st.st_uid not in (0, os.geteuid()):
        return f"key file {path} is owned by uid {st.st_uid}, not root; run: chown root {path}"
    if st.st_mode & 0o077:
        return (
            f"key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    return None


def _key_open_error(path: str, e: OSError) -> str:
    """Why the key file could not be opened, with the fix."""
    if isinstance(e, FileNotFoundError):
        return (
            f"cannot open key file {path}: {e.strerror} (create one with: ipfailover keygen PATH)"
        )
    if e.errno == errno.ELOOP:
        return (
            f"key file {path} is a symbolic link, which is refused (whoever can change the link "
            "chooses the key); point FAILOVER_KEY_FILE at the file itself: "
            f"{os.path.realpath(path)}"
        )
    return f"cannot open key file {path}: {e.strerror}"


CAP_NET_ADMIN = 12  # linux/capability.h


def has_capability(bit: int) -> bool:
    """Whether this process's effective capability set holds ``bit`` (/proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def run_dir_error(cfg: config.Config, e: OSError) -> StartupError:
    """FAILOVER_RUN_DIR (or a file in it) could not be created: one line naming it and the fix."""
    where = cfg.where("FAILOVER_RUN_DIR")
    what = e.filename or cfg.run_dir
    if isinstance(e, PermissionError):
        fix = (
            f"run as root (uid {os.geteuid()} may not write there), or set FAILOVER_RUN_DIR "
            "to a directory this user owns"
        )
    else:
        fix = "set FAILOVER_RUN_DIR to a directory (every parent must be a directory)"
    return StartupError(f"{where}: cannot create {what}: {e.strerror}; {fix}")


async def start_control(cfg: config.Config, server: Any) -> None:
    """Start a daemon's control socket (a ``control.ControlServer``) in FAILOVER_RUN_DIR."""
    try:
        await server.start()
    except OSError as e:
        raise run_dir_error(cfg, e) from None


def node_name(cfg: config.Config) -> str:
    """FAILOVER_NODE_NAME, else the host name; StartupError if the host name cannot go on the
    wire (we refuse rather than rewrite it: a rewritten name could match another host's)."""
    if cfg.node_name:
        return cfg.node_name
    host = socket.gethostname()[: wire.MAX_NAME] or "localhost"
    problem = config.node_name_problem(host)
    if problem is not None:
        where = cfg.where("FAILOVER_NODE_NAME")
        raise StartupError(
            f"{where}: unset, and the host name {problem}; set FAILOVER_NODE_NAME to a name "
            f"of {wire.NAME_CHARS}"
        )
    return host


def run(main: Coroutine[object, object, int]) -> int:
    """Run a daemon's main coroutine; a StartupError means exit 2, before touching the network."""
    try:
        return asyncio.run(main)
    except StartupError as e:
        print(str(e), file=sys.stderr)
        return EXIT_CONFIG


async def watched_networks(cfg: config.Config) -> tuple[str, ...]:
    """FAILOVER_NETWORKS, or the pairs' interfaces plus those on FAILOVER_PEER_IP's subnet."""
    from ipfailover.shell import netif

    if cfg.networks:
        missing = await netif.missing_interfaces(cfg.networks)
        if missing:
            raise StartupError(
                f"{cfg.where('FAILOVER_NETWORKS')}: no such interface: {', '.join(missing)}"
            )
        return cfg.networks
    names = {p.interface for p in cfg.peer_ip_pairs}
    if cfg.peer_ip is not None:
        try:
            on_subnet = await netif.addresses_on_subnets_of([cfg.peer_ip])
        except netif.NetifError as e:
            raise StartupError(f"{cfg.path}: {e}") from None
        names.update(a.ifname for a in on_subnet)
    return tuple(sorted(names))
