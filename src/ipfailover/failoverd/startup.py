"""failoverd's start-up and main: the checks before the first address change (pairs, networks,
the lock, accept_local), adopting addresses held before a restart, and the run until stopped."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from ipfailover import mail
from ipfailover.core import config
from ipfailover.failover import executor as transition
from ipfailover.failoverd.checks import log_check_warnings, quietly, resolve_pairs
from ipfailover.failoverd.daemon import Failoverd
from ipfailover.shell import control, netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import sysctl as hostconf

log = logging.getLogger("ipfailover.failoverd")
DESCRIPTION = (  # the first line of the package's docstring
    "failoverd: the secondary's daemon. Watches the primary; takes over its addresses when it dies."
)


def build_parser() -> argparse.ArgumentParser:
    return daemon.base_parser(
        "failoverd",
        DESCRIPTION,
        stop="release what it holds, running PreRel/PostRel, then exit",
        hup=";\n                   addresses that stay are not touched",
    )


async def amain(argv: list[str] | None) -> int:
    cfg, key = daemon.start_up(build_parser(), argv, "failoverd")
    if problem := mail.notify_program_problem(cfg):
        raise daemon.StartupError(problem)
    if not daemon.has_capability(daemon.CAP_NET_ADMIN):
        raise daemon.StartupError(
            f"failoverd: uid {os.geteuid()} lacks CAP_NET_ADMIN, which adding and deleting "
            "addresses needs: run it as root (the systemd unit does)"
        )
    assignments = await resolve_pairs(cfg)
    networks = await daemon.watched_networks(cfg)
    lock = take_lock(cfg, assignments)
    accept_local = hostconf.AcceptLocal(cfg.run_dir)
    try:
        return await _run(cfg, key, assignments, networks, lock, accept_local)
    finally:
        accept_local.restore()  # only where we turned it on; after the addresses are released
        lock.close()


async def _run(
    cfg: config.Config,
    key: bytes,
    assignments: list[netif.Assignment],
    networks: tuple[str, ...],
    lock: transition.ManagerLock,
    accept_local: hostconf.AcceptLocal,
) -> int:
    try:
        accept_local.need(a.ifname for a in assignments)
    except hostconf.HostConfError as e:
        raise daemon.StartupError(f"{cfg.path}: {e}") from None
    present = [
        a
        for a, there in zip(assignments, await netif.present_all(assignments), strict=True)
        if there
    ]
    loop = asyncio.get_running_loop()
    fd = Failoverd.create(
        cfg,
        key,
        loop,
        assignments,
        networks,
        holding=bool(present),
        lock=lock,
        accept_local=accept_local,
    )
    # Everything that can still fail comes before the first address change.
    await daemon.start_control(cfg, fd.control)
    daemon.start_metrics(cfg, "FAILOVER_METRICS", loop, fd.snapshot)
    if present:
        # Restarted while holding (even after SIGKILL): adopt, no release-and-reacquire blip.
        for a in assignments:
            if a not in present:
                await quietly(fd.events, fd.backend.add(a), "adopt-add-error", a)
        fd.events("adopt", addresses=" ".join(str(a) for a in present))
    fd.start()
    fd.service.ready(fd._status_line())
    await log_check_warnings(cfg, fd.events)
    fd._spawn(fd.executor.prepare())
    await fd.stopped.wait()
    await fd.control.close()
    await fd.close()
    return 0


def take_lock(cfg: config.Config, assignments: list[netif.Assignment]) -> transition.ManagerLock:
    """Claim our addresses in FAILOVER_RUN_DIR (``ipfailover process`` keeps off them)."""
    where = cfg.where("FAILOVER_RUN_DIR")
    try:
        return transition.ManagerLock.take(cfg.run_dir, assignments)
    except transition.LockHeld as e:
        raise daemon.StartupError(
            f"{where}: {e.path} is held by pid {e.pid}: another failoverd, or an "
            "`ipfailover process` run, manages these addresses"
        ) from None
    except control.UnsafeDirectory as e:
        raise daemon.StartupError(f"{where}: {e}") from None
    except OSError as e:
        raise daemon.run_dir_error(cfg, e) from None


def main(argv: list[str] | None = None) -> int:
    return daemon.run(amain(argv))
