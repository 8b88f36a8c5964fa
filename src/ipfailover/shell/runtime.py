"""What both daemons' asyncio shells share: start-up checks, logging, key loading, UDP sockets.

Everything that touches the outside world lives in the shells; the cores (``sender``, ``monitor``)
never see a socket or a clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import gc
import importlib
import logging
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ipfailover import __version__
from ipfailover.core import auth, config, wire
from ipfailover.shell import control, sdnotify

EXIT_CONFIG = 2
log = logging.getLogger("ipfailover.daemon")


class StartupError(Exception):
    """A problem found before touching the network; printed as is, then exit status 2."""


# Logging ---------------------------------------------------------------------------------------


def _quote(value: object) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text or any(c in text for c in ' "=\\'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_event(event: str, **fields: object) -> str:
    """One log line of stable ``key=value`` fields, ``event`` first (journald/syslog friendly)."""
    parts = [f"event={event}"]
    parts += [f"{k.replace('_', '-')}={_quote(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


class EventLog:
    """Logs events as ``key=value`` lines; repeated drops are rate-limited per reason."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, window: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self._drops: dict[str, tuple[float, int, int]] = {}  # reason -> (window start, n, hidden)

    def __call__(self, event: str, level: int = logging.INFO, **fields: object) -> None:
        self.logger.log(level, format_event(event, **fields))

    def dropped(self, d: wire.Dropped, now: float) -> None:
        start, shown, hidden = self._drops.get(d.reason.value, (now, 0, 0))
        if now - start >= self.window:
            if hidden:
                self("drops-suppressed", logging.WARNING, reason=d.reason.value, count=hidden)
            start, shown, hidden = now, 0, 0
        if self.logger.isEnabledFor(logging.DEBUG):  # --verbose: every decision, unthrottled
            shown = 0
        if shown < self.burst:
            level = logging.INFO if d.reason is wire.Reason.STALE else logging.WARNING
            self(
                "dropped",
                level,
                reason=d.reason.value,
                detail=d.detail,
                source=f"{d.addr[0]}:{d.addr[1]}",
                network=d.network or None,
            )
            shown += 1
        else:
            hidden += 1
        self._drops[d.reason.value] = (start, shown, hidden)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.Formatter.converter = time.gmtime


class WallClock:
    """Converts the loop's monotonic times into wall-clock seconds, for status and mail."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.offset = time.time() - loop.time()

    def __call__(self, t: float | None) -> float | None:
        return None if t is None else t + self.offset


# Identity ----------------------------------------------------------------------------------------

COLLISION_FIX = (
    "another machine sends under this node name (a cloned host name?): give each machine its "
    "own FAILOVER_NODE_NAME"
)


class HasIdentity(Protocol):
    @property
    def wants_local_boots(self) -> bool: ...

    def set_local_boots(self, boots: frozenset[bytes], now: float) -> None: ...


def answer_local_boots(core: HasIdentity, run_dir: str, now: float) -> None:
    """A datagram with our name and an unknown boot id came in: tell the core which boot ids
    are this host's (its own, and the other daemon's on a peering host). The core rate-limits
    how often it asks."""
    if core.wants_local_boots:
        core.set_local_boots(control.read_boots(run_dir), now)


def log_collision(events: EventLog, ev: auth.NameCollision) -> None:
    events(
        "node-name-collision",
        logging.ERROR,
        name=ev.name,
        source=f"{ev.addr[0]}:{ev.addr[1]}",
        boot=ev.boot.hex(),
        network=ev.network or None,
        fix=COLLISION_FIX,
    )


def collision_status(
    c: auth.Collision | None, wall: WallClock, now: float
) -> dict[str, Any] | None:
    """The ``name_collision`` object of the status (docs/status.md)."""
    if c is None:
        return None
    return {
        "name": c.name,
        "source": f"{c.addr[0]}:{c.addr[1]}",
        "boot": c.boot.hex(),
        "network": c.network or None,
        "first": wall(c.first),
        "last": wall(c.last),
        "datagrams": c.count,
        "episodes": c.episodes,
        "active": now - c.last <= auth.COLLISION_QUIET,
    }


def rejected_counts(counters: Mapping[str, int]) -> dict[str, int]:
    """``rejected.<reason>`` counters as {reason: count}, with every reason present."""
    return {r.value: counters.get(f"rejected.{r.value}", 0) for r in wire.Reason}


def start_metrics(
    cfg: config.Config,
    variable: str,
    loop: asyncio.AbstractEventLoop,
    snapshot: Callable[[], dict[str, Any]],
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


class Service:
    """What the service manager hears (sd_notify): READY, RELOADING, STOPPING, and the watchdog,
    fed from the event loop itself so a wedged loop is restarted. Silent outside systemd."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, healthy: Callable[[], bool] = lambda: True
    ) -> None:
        self.loop = loop
        self.healthy = healthy
        interval = sdnotify.watchdog_interval()
        self._feed_every = None if interval is None else interval / 2
        self._feeding = False
        self._frozen = False

    def ready(self, status: str) -> None:
        if not self._frozen:
            # What start-up built (modules, config, sockets) lives as long as the daemon: out
            # of the cyclic collector's reach, so a full collection no longer walks it all
            # (tens of milliseconds each, every few seconds at a 0.1 s interval).
            gc.freeze()
            self._frozen = True
        sdnotify.notify(READY=1, STATUS=status)
        if self._feed_every is not None and not self._feeding:
            self._feeding = True  # one chain, however often we become ready again
            self._feed()

    def reloading(self) -> None:
        sdnotify.notify(RELOADING=1)

    def stopping(self) -> None:
        sdnotify.notify(STOPPING=1)

    def _feed(self) -> None:
        # Only while the core's timer is being served: a loop that runs but no longer drives
        # the core (a bug left its deadline unarmed or long overdue) gets restarted.
        if self.healthy():
            sdnotify.notify(WATCHDOG=1)
        else:
            log.error("event=watchdog-starved: the core's deadline is overdue; not feeding")
        assert self._feed_every is not None
        self.loop.call_later(self._feed_every, self._feed)


class Timer:
    """One re-armable absolute deadline on the event loop (the cores hand out deadlines)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self.deadline: float | None = None

    def arm(self, deadline: float | None) -> None:
        if deadline is not None and deadline == self.deadline and self._handle is not None:
            return  # already armed for it (a datagram flood re-arms on every datagram)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.deadline = deadline
        if deadline is not None:
            self._handle = self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None  # spent: arming the same deadline again schedules it again
        self.callback()

    def served(self, slack: float = 5.0) -> bool:
        """The armed deadline is not overdue by more than ``slack`` seconds."""
        return self.deadline is None or self.loop.time() < self.deadline + slack


# UDP -------------------------------------------------------------------------------------------

_IN_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("@16sI")  # struct in6_pktinfo: addr, ifindex
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass
class Datagram:
    data: bytes
    addr: wire.Addr
    ifname: str


RCVBUF = 1 << 20  # bytes of receive buffer per socket: about 1000 queued datagrams
DRAIN_BATCH = 64  # datagrams read from one socket per event-loop iteration


class UdpEndpoint:
    """An IPv4 and an IPv6 UDP socket on one port, reporting the interface each datagram came in on.

    The receiving interface is what names a network: it comes from the kernel (IP_PKTINFO /
    IPV6_PKTINFO), never from the payload.

    With ``per_device`` and :meth:`bind_devices` (failoverd, for the networks it watches), each
    of those interfaces also gets receiving sockets of its own (SO_BINDTODEVICE): the kernel
    queues each network's datagrams apart, and the event loop reads at most DRAIN_BATCH from
    each socket per turn. So
    a flood on one network cannot push the other networks' heartbeats out of a shared queue,
    nor keep them from being read. Unicast to such an interface reaches only its own socket;
    a broadcast reaches the wildcard socket too, which then ignores it. Sending always goes
    through the wildcard sockets.
    """

    def __init__(
        self,
        port: int,
        *,
        broadcast: bool = False,
        families: Iterable[int] = (),
        per_device: bool = False,
    ) -> None:
        self.socks: dict[int, socket.socket] = {}
        for family in families or (socket.AF_INET, socket.AF_INET6):
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as e:
                if family == socket.AF_INET6 and e.errno == errno.EAFNOSUPPORT:
                    log.warning("IPv6 is disabled on this host: listening on IPv4 only")
                    continue
                raise
            try:
                _prepare(sock, family, port, broadcast, reuse_port=per_device)
            except OSError:
                sock.close()
                raise
            self.socks[family] = sock
        self.port = port
        self._names: dict[int, str] = {}
        self.send_errors = 0
        self.last_send_error = ""  # strerror of the latest failed send
        # destination IP -> where to send instead, as a socket address without the port;
        # see netif.unicast_substitute
        self.redirects: dict[str, tuple[Any, ...]] = {}
        self.devices: dict[tuple[int, str], socket.socket] = {}  # (family, ifname) -> socket
        self._bound: set[int] = set()  # ifindexes with sockets of their own
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_datagram: Callable[[Datagram], None] | None = None

    def start(
        self, loop: asyncio.AbstractEventLoop, on_datagram: Callable[[Datagram], None]
    ) -> None:
        self._loop, self._on_datagram = loop, on_datagram
        for sock in [*self.socks.values(), *self.devices.values()]:
            loop.add_reader(sock.fileno(), self._drain, sock, on_datagram)

    def close(self) -> None:
        for sock in [*self.socks.values(), *self.devices.values()]:
            self._forget(sock)
        self.devices.clear()

    def _forget(self, sock: socket.socket) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(sock.fileno())
        sock.close()

    def bind_devices(self, ifnames: Iterable[str]) -> list[str]:
        """Give each of these interfaces receiving sockets of its own (and drop those of
        interfaces no longer listed). Returns the problems, one line each: an interface that
        cannot have its own socket is still read through the wildcard socket."""
        wanted = set(ifnames)
        for key in [k for k in self.devices if k[1] not in wanted]:
            self._forget(self.devices.pop(key))
        problems = []
        for family in self.socks:
            for name in sorted(wanted):
                if (family, name) in self.devices:
                    continue
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
                    _prepare(sock, family, self.port, broadcast=False, reuse_port=True)
                except OSError as e:
                    sock.close()
                    problems.append(f"{name}: {e.strerror or e}")
                    continue
                self.devices[(family, name)] = sock
                if self._loop is not None and self._on_datagram is not None:
                    self._loop.add_reader(sock.fileno(), self._drain, sock, self._on_datagram)
        bound = set()
        for name in {n for _, n in self.devices}:
            with contextlib.suppress(OSError):
                bound.add(socket.if_nametoindex(name))
        if bound != self._bound:
            for sock in self.socks.values():
                _drop_from(sock, bound)
        self._bound = bound
        return problems

    def _ifname(self, index: int) -> str:
        if index not in self._names:
            try:
                self._names[index] = socket.if_indextoname(index)
            except OSError:
                return f"if{index}"
        return self._names[index]

    def _drain(self, sock: socket.socket, on_datagram: Callable[[Datagram], None]) -> None:
        wildcard = sock in self.socks.values()
        for _ in range(DRAIN_BATCH):  # bounded per wake-up so timers are never starved
            try:
                data, anc, _flags, addr = sock.recvmsg(wire.MAX_SIZE + 1, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on the socket; nothing to read
            index = 0
            for level, kind, payload in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    index = _IN_PKTINFO.unpack_from(payload)[0]
                elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                    index = _IN6_PKTINFO.unpack_from(payload)[1]
            if wildcard and index in self._bound:
                continue  # a broadcast copy: that interface's own socket has it too
            on_datagram(Datagram(data, (addr[0], addr[1]), self._ifname(index)))

    def sendto(self, data: bytes, addr: wire.Addr) -> bool:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        sock = self.socks.get(family)
        if sock is None:
            self.send_errors += 1
            return False
        sub = self.redirects.get(addr[0])
        dest: tuple[Any, ...] = addr if sub is None else (sub[0], addr[1], *sub[1:])
        try:
            sock.sendto(data, dest)
            return True
        except OSError as e:
            self.send_errors += 1  # link down, no route: the peer will notice the silence
            self.last_send_error = e.strerror or str(e)
            return False


SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SKF_AD_IFINDEX = -0x1000 + 8  # classic BPF: load the receiving interface's index


def _drop_from(sock: socket.socket, ifindexes: Iterable[int]) -> None:
    """Have the kernel drop, on a wildcard socket, what arrives on these interfaces (they have
    sockets of their own, which get a copy): without it every broadcast heartbeat is read twice,
    once only to be ignored. _drain still ignores such a copy should the filter be missing."""
    indexes = sorted(ifindexes)[:64]
    if not indexes:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        return
    n = len(indexes)
    program = [(0x20, 0, 0, SKF_AD_IFINDEX & 0xFFFFFFFF)]  # ld ifindex
    for i, index in enumerate(indexes):  # jeq index: drop, else next
        program.append((0x15, n - i, 0, index))
    program += [(0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]  # accept; drop
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HP", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as e:
        log.warning("cannot filter the wildcard socket (%s): copies are ignored instead", e)


def _prepare(
    sock: socket.socket, family: int, port: int, broadcast: bool, *, reuse_port: bool = False
) -> None:
    """Non-blocking, packet info on, a large receive buffer, bound to the wildcard address."""
    sock.setblocking(False)
    # No SO_REUSEADDR: with it, any local user could bind the same port on a specific
    # address and receive the unicast heartbeats (or challenges) instead of us. SO_REUSEPORT,
    # which the per-interface sockets need to share the port with the wildcard one, lets only
    # sockets of the same user (root) share it, and the kernel groups them per interface, so
    # each datagram still reaches exactly one of them (a broadcast: one per interface).
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:  # as root, past net.core.rmem_max; else as much of it as the limit allows
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("0.0.0.0", port))
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.bind(("::", port))


def install_signals(
    loop: asyncio.AbstractEventLoop, *, stop: Callable[[], None], reload: Callable[[], None]
) -> None:
    """SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads it."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)


async def preload(*modules: str) -> None:
    """Import modules in a worker thread: what a daemon needs only after it is ready (pyroute2,
    0.1-0.4 s) is loaded while the event loop goes on beating (the import holds the GIL only
    in short slices)."""
    missing = [m for m in modules if m not in sys.modules]
    if missing:
        await asyncio.to_thread(lambda: [importlib.import_module(m) for m in missing])


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
