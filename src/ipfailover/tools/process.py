"""``ipfailover process`` and ``ipfailover notify``: Apple's ProcessFailover and NotifyFailover.

``ipfailover process {acquire|down|release|up} if:ip[/mask]...`` takes addresses over or hands
them back by hand, through the same executor as failoverd (:mod:`ipfailover.failover.executor`): the
same script folder, ``Test`` gate, scripts, announcements and mail. It refuses, with exit status
3, to touch an address that a running failoverd manages (failoverd holds an flock on
``<FAILOVER_RUN_DIR>/failoverd.lock`` listing them), and while it runs it holds a shared flock
on that file, so a failoverd cannot start in the middle of it.

``ipfailover notify {up|down} ip...`` sends one mail over SMTP to FAILOVER_EMAIL_RECIPIENT and
exits 0 once the server accepted it, 1 if not (it does not spool: the caller decides whether to
retry). It is the built-in ``NotifyFailover``; a FAILOVER_NOTIFY_PROGRAM may wrap it, passing
failoverd's message through with ``--stdin``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import fcntl
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ipfailover import mail
from ipfailover.core import config
from ipfailover.failover import executor as transition
from ipfailover.shell import control, netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks

log = logging.getLogger("ipfailover.process")

ACTIONS = {
    "acquire": transition.Action.ACQUIRE,
    "down": transition.Action.ACQUIRE,  # Apple's synonym: the primary is down
    "release": transition.Action.RELEASE,
    "up": transition.Action.RELEASE,  # Apple's synonym: the primary is up
}
EXIT_OK = 0
EXIT_NOT_DONE = 1  # Test said no, or the address change failed (2: bad arguments or config)
EXIT_MANAGED = 3  # failoverd manages those addresses, or another process run is going on
MAIL_WAIT = 60.0  # seconds ``process`` spends trying to deliver its mail before leaving it spooled
PROCESS_LOCK = "process.lock"
LOCK_TRIES = 3  # looks at failoverd.lock when a failoverd is stopping just as we look


# --- process --------------------------------------------------------------------------------------


def configure_process_parser(p: argparse.ArgumentParser) -> None:
    """Add ``ipfailover process`` arguments to a (sub)parser."""
    p.description = (
        "Take addresses over (acquire, or Apple's 'down') or hand them back (release, or 'up') "
        "by hand, with the same Test gate, transition scripts and mail as failoverd. Refused "
        "while failoverd manages any of the addresses."
    )
    config.add_path_argument(p)
    p.add_argument(
        "--skip-test", action="store_true", help="do not run the Test script: you decided"
    )
    p.add_argument("action", choices=list(ACTIONS), help="acquire|down or release|up")
    p.add_argument("pairs", nargs="+", metavar="IF:IP[/MASK]", help="e.g. eth0:192.0.2.10/24")


def run_process(args: argparse.Namespace) -> int:
    daemon.setup_logging(False)
    return daemon.run(_process(args))


def _parse_pairs(texts: list[str]) -> list[config.PeerPair]:
    pairs, problems = [], []
    for text in texts:
        try:
            pairs.append(config.parse_peer_pair(text))
        except ValueError as e:
            problems.append(f"ipfailover process: {text}: {e}")
    if problems:
        raise daemon.StartupError("\n".join(problems))
    return pairs


async def _resolve(pairs: list[config.PeerPair]) -> list[netif.Assignment]:
    try:
        return [await netif.resolve(p.interface, p.address, p.prefixlen) for p in pairs]
    except netif.NetifError as e:
        raise daemon.StartupError(f"ipfailover process: {e}") from None


def _lock_file(path: Path) -> int:
    """Open (creating it and its folder) a lock file in FAILOVER_RUN_DIR."""
    try:
        control.make_run_dir(path.parent)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except control.UnsafeDirectory as e:
        raise daemon.StartupError(f"ipfailover process: FAILOVER_RUN_DIR: {e}") from None
    except OSError as e:
        raise daemon.StartupError(f"ipfailover process: cannot open {path}: {e.strerror}") from None


@contextlib.contextmanager
def _one_at_a_time(run_dir: str) -> Iterator[bool]:
    """An flock that keeps two ``ipfailover process`` runs from overlapping; False if busy."""
    fd = _lock_file(Path(run_dir) / PROCESS_LOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def refusal(held: transition.LockHeld, assignments: list[netif.Assignment]) -> str | None:
    """Why ``process`` must not touch these addresses while ``held`` (a failoverd) runs, or None."""
    shared = transition.overlap(held, assignments)
    if not shared:
        return None
    who = f"failoverd (pid {held.pid})" if held.pid else "failoverd"
    return (
        f"refused: {who} manages {' '.join(shared)} (see {held.path}); stop failoverd first "
        "(e.g. systemctl stop failoverd), or let it act"
    )


@contextlib.contextmanager
def failoverd_kept_out(run_dir: str, assignments: list[netif.Assignment]) -> Iterator[str | None]:
    """For the whole run, keep failoverd from starting; yields why not to go on, or None.

    A shared flock on ``failoverd.lock``: failoverd takes it exclusively without waiting, so a
    failoverd started during the run exits at start-up (status 2, saying the lock's holder is
    running) instead of managing addresses in the middle of a transition by hand. The file then
    says ``pid <ours>`` and ``held-by ipfailover process``, and is emptied again at the end.
    If a running failoverd holds the lock already, the addresses it lists decide.
    """
    path = Path(run_dir) / transition.LOCK_NAME
    fd = _lock_file(path)
    try:
        for _ in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held = transition.manager(run_dir)
                if held is not None:  # a running failoverd: it has started already
                    yield refusal(held, assignments)
                    return
                continue  # it stopped between the two looks: try again
            _write(fd, f"pid {os.getpid()}\nheld-by ipfailover process\n")
            try:
                yield None
            finally:
                _write(fd, "")
            return
        yield f"refused: {path} is taken and released over and over; try again"
    finally:
        os.close(fd)


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


async def _process(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    assignments = await _resolve(_parse_pairs(args.pairs))
    with _one_at_a_time(cfg.run_dir) as mine:
        if not mine:
            print("ipfailover process: another 'ipfailover process' is running", file=sys.stderr)
            return EXIT_MANAGED
        with failoverd_kept_out(cfg.run_dir, assignments) as why:
            if why is not None:
                print(f"ipfailover process: {why}", file=sys.stderr)
                return EXIT_MANAGED
            action = ACTIONS[args.action]
            return await _carry_out(cfg, action, assignments, gate=not args.skip_test)


def _load(path: str) -> config.Config:
    try:
        return config.load_config(path)
    except config.ConfigErrors as errs:
        raise daemon.StartupError(str(errs)) from None


async def _carry_out(
    cfg: config.Config,
    action: transition.Action,
    assignments: list[netif.Assignment],
    *,
    gate: bool,
) -> int:
    node = daemon.node_name(cfg)
    events = daemon.EventLog(log)
    settings = mail.MailSettings.from_config(cfg)
    outbox = mail.Outbox(settings, mail.delivery_for(settings), events, node)
    folder = hooks.script_folder(cfg, [a.address for a in assignments])
    executor = transition.Executor(
        node=node,
        addresses=assignments,
        scripts=hooks.ScriptFolder.for_config(cfg, folder),
        backend=transition.NetlinkBackend(),
        announcing=transition.Announcing(cfg.garp_count, cfg.garp_interval),
        notifier=outbox,
        events=events,
    )
    peer = cfg.peer_name or (str(cfg.peer_ip) if cfg.peer_ip else "the primary")
    situation = mail.Situation(
        node=node,
        host=socket.gethostname(),
        peer=peer,
        addresses=tuple(transition.plain(a) for a in assignments),
        watched=False,
    )
    if action is transition.Action.ACQUIRE:
        rec = await executor.acquire("manual", situation, gate=gate)
    else:
        rec = await executor.release("manual", situation, gate=gate)
    await executor.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(outbox.deliver_due(), MAIL_WAIT)
    await outbox.spool_memory(MAIL_WAIT)  # what a full spool could not take at first
    _report(rec, outbox)
    return EXIT_OK if rec.outcome is transition.Outcome.DONE else EXIT_NOT_DONE


def _report(rec: transition.TransitionRecord, outbox: mail.Outbox) -> None:
    """One summary line on stdout, and where the mail is if it is not delivered yet."""
    verb = "acquired" if rec.action is transition.Action.ACQUIRE else "released"
    addresses = " ".join(rec.addresses)
    if rec.ok:
        print(f"{verb} {addresses} in {rec.duration:.3f} s ({rec.outcome})")
    else:
        print(f"not {verb}: {rec.why} ({rec.outcome})", file=sys.stderr)
    for problem in rec.script_problems:
        print(f"  script {problem.name}: {problem.detail}", file=sys.stderr)
    pending = outbox.pending()
    if pending:
        print(
            f"{pending} mail(s) not delivered yet, kept in {outbox.spool.path}; a running "
            "failoverd delivers them",
            file=sys.stderr,
        )


# --- notify --------------------------------------------------------------------------------------


def configure_notify_parser(p: argparse.ArgumentParser) -> None:
    """Add ``ipfailover notify`` arguments to a (sub)parser."""
    p.description = (
        "Mail FAILOVER_EMAIL_RECIPIENT over SMTP that the primary's addresses are down (taken "
        "over) or up (handed back); exit 0 once the server accepted it. Apple's NotifyFailover."
    )
    config.add_path_argument(p)
    p.add_argument(
        "--stdin",
        action="store_true",
        help="read the message from stdin (as failoverd hands it to FAILOVER_NOTIFY_PROGRAM) "
        "and send its subject and text",
    )
    p.add_argument("direction", choices=["up", "down"])
    p.add_argument("ips", nargs="+", metavar="IP")


def run_notify(args: argparse.Namespace) -> int:
    daemon.setup_logging(False)
    return daemon.run(_notify(args))


def _notice_from_stdin(direction: str, ips: list[str], text: str, host: str) -> mail.Notice:
    """A notice from a whole message on stdin (failoverd's), or from plain text as the body."""
    msg = email.message_from_string(text, policy=email.policy.default)
    subject = msg.get("Subject")
    if subject is None:
        default = mail.command_notice(direction, ips, host)
        return mail.Notice("notify", direction, tuple(ips), default.subject, text)
    body = msg.get_body(preferencelist=("plain",))
    content = body.get_content() if body is not None else ""
    event = str(msg.get("X-IPFailover-Event", "notify"))
    return mail.Notice(event, direction, tuple(ips), str(subject), str(content))


async def _notify(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    bad = [ip for ip in args.ips if not _is_ip(ip)]
    if bad:
        raise daemon.StartupError(f"ipfailover notify: not an IP address: {' '.join(bad)}")
    host = socket.gethostname()
    if args.stdin:
        notice = _notice_from_stdin(args.direction, args.ips, sys.stdin.read(), host)
    else:
        notice = mail.command_notice(args.direction, args.ips, host)
    settings = mail.MailSettings.from_config(cfg)
    item = mail.make_item(notice, settings, daemon.node_name(cfg), "direct", time.time())
    delivery = mail.SmtpDelivery(
        settings.smtp_host, settings.smtp_port, settings.starttls, settings.credentials_file
    )
    try:
        await delivery.deliver(item)
    except mail.DeliveryError as e:
        print(f"ipfailover notify: not sent: {e}", file=sys.stderr)
        return EXIT_NOT_DONE
    print(f"sent to {', '.join(settings.recipients)}: {notice.subject}")
    return EXIT_OK


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
