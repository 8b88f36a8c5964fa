"""What failoverd makes of its configuration, at start-up and again on each reload: the pairs'
interfaces, the monitor's settings, what ``ipfailover check`` would warn about; and an address
change whose failure is logged, not raised."""

from __future__ import annotations

import logging
from collections.abc import Coroutine

from ipfailover.core import config
from ipfailover.core.monitor import MonitorConfig
from ipfailover.shell import netif
from ipfailover.shell import runtime as daemon


async def resolve_pairs(cfg: config.Config) -> list[netif.Assignment]:
    """Bind each FAILOVER_PEER_IP_PAIRS entry to its interface; a missing one stops start-up."""
    where = cfg.where("FAILOVER_PEER_IP_PAIRS")
    missing = await netif.missing_interfaces(p.interface for p in cfg.peer_ip_pairs)
    if missing:
        raise daemon.StartupError(f"{where}: no such interface: {', '.join(sorted(set(missing)))}")
    return await netif.resolve_all((p.interface, p.address, p.prefixlen) for p in cfg.peer_ip_pairs)


async def log_check_warnings(cfg: config.Config, events: daemon.EventLog) -> None:
    """What ``ipfailover check`` would warn about (mask/subnet, unsafe scripts), in the log.
    Advice, not a condition of running: at start-up it is logged just after READY."""
    from ipfailover.tools import check

    for problem in [*await check.pair_problems(cfg), *check.script_problems(cfg)]:
        level = logging.ERROR if problem.fatal else logging.WARNING
        events("check-error" if problem.fatal else "check-warning", level, problem=problem.text)


def monitor_config(cfg: config.Config, key: bytes, networks: tuple[str, ...]) -> MonitorConfig:
    return MonitorConfig(
        node=daemon.node_name(cfg),
        key=key,
        period=cfg.interval,
        deadtime=cfg.effective_deadtime,
        failback_delay=cfg.failback_delay,
        networks=networks,
        peer_ip=cfg.peer_ip,
        peer_name=cfg.peer_name,
        take_answering=cfg.take_answering,
    )


async def quietly(
    events: daemon.EventLog, change: Coroutine[object, object, bool], event: str, a: object
) -> bool:
    try:
        return await change
    except netif.NetifError as e:
        events(event, logging.ERROR, address=a, error=e)
        return False
