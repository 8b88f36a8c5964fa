"""failoverd's reload (SIGHUP): a good configuration applied without leaving the current state,
a bad one logged and the old one kept."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ipfailover.core import config, episodes
from ipfailover.core.monitor import Monitor, State
from ipfailover.failover import executor as transition
from ipfailover.failoverd.checks import log_check_warnings, monitor_config, quietly, resolve_pairs
from ipfailover.shell import netif
from ipfailover.shell import runtime as daemon
from ipfailover.shell import scripts as hooks
from ipfailover.shell import sysctl as hostconf
from ipfailover.shell.clock import Clock

log = logging.getLogger("ipfailover.failoverd")


class ReloadMixin:
    """Failoverd's reload (a part of :class:`Failoverd`)."""

    if TYPE_CHECKING:
        cfg: config.Config
        loop: asyncio.AbstractEventLoop
        core: Monitor
        clock: Clock
        events: daemon.EventLog
        service: daemon.Service
        udp: daemon.UdpEndpoint
        assignments: list[netif.Assignment]
        scripts: hooks.ScriptFolder
        executor: transition.TransitionExecutor
        backend: transition.AddressBackend
        lock: transition.ManagerLock | None
        accept_local: hostconf.AcceptLocal | None
        notices: episodes.NetworkNotices
        _changing: asyncio.Lock
        _ours: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]
        _by_text: dict[str, netif.Assignment]
        _plain: tuple[str, ...]

        def _flush(self) -> None: ...

        def _spawn(self, coro: Coroutine[object, object, None]) -> None: ...

        def _status_line(self) -> str: ...

        def _addresses(self) -> str: ...

        def _on_datagram(self, dg: daemon.Datagram) -> None: ...

        def _bind_networks(self, networks: tuple[str, ...]) -> None: ...

        @classmethod
        def _endpoint(
            cls, cfg: config.Config, assignments: list[netif.Assignment]
        ) -> daemon.UdpEndpoint: ...

        @staticmethod
        def _endpoint_redirects(
            assignments: list[netif.Assignment],
        ) -> dict[str, tuple[Any, ...]]: ...

    async def reload(self) -> None:
        """Re-read the configuration; a bad one is logged and the old one kept.

        A good one is applied without leaving the current state: addresses that stay are not
        touched; while we hold, removed pairs are deleted and added ones added and announced.
        Reloads and transitions take turns (one lock), so a reload never lands in the middle
        of a takeover or a release, nor two reloads in each other.
        """
        self.service.reloading()
        try:
            async with self._changing:
                if self.core.state in (State.STOPPING, State.STOPPED):
                    self.events("reload-skipped", state=self.core.state.value)
                    return
                await self._reload()
        except Exception as e:  # a reload must never take the daemon down with it
            errors = str(e).replace("\n", "; ") or repr(e)
            self.events("reload-failed", logging.ERROR, errors=errors)
        finally:
            self.service.ready(self._status_line())

    async def _reload(self) -> None:
        cfg = daemon.load_role_config(self.cfg.path, "failoverd")
        key = daemon.load_key(cfg)
        assignments = await resolve_pairs(cfg)
        networks = await daemon.watched_networks(cfg)
        if self.accept_local is not None:
            self.accept_local.need(a.ifname for a in assignments)
        if cfg.port != self.cfg.port:
            udp = self._endpoint(cfg, assignments)  # may fail: then nothing has changed yet
            self.udp.close()
            self.udp = udp
            self.udp.start(self.loop, self._on_datagram)
        else:
            self.udp.redirects = self._endpoint_redirects(assignments)
        self._bind_networks(networks)
        removed = [a for a in self.assignments if a not in assignments]
        added = [a for a in assignments if a not in self.assignments]
        if self.core.holding:
            for a in removed:
                await quietly(self.events, self.backend.delete(a), "reload-delete-error", a)
            for a in added:
                if await quietly(self.events, self.backend.add(a), "reload-add-error", a):
                    self._spawn(self._announce(a, cfg))
        self.cfg, self.assignments = cfg, assignments
        self._ours = frozenset(a.address for a in assignments)
        self._by_text = {str(a.address): a for a in assignments}
        self._plain = tuple(transition.plain(a) for a in assignments)
        self.scripts = hooks.ScriptFolder.for_config(cfg)
        self.executor.reconfigure(
            assignments, self.scripts, transition.Announcing(cfg.garp_count, cfg.garp_interval)
        )
        self._spawn(self.executor.prepare())
        if self.lock is not None:
            self.lock.update(assignments)
        self.core.reconfigure(monitor_config(cfg, key, networks), self.clock.monotonic())
        self.notices.settle = episodes.settle_time(self.core.cfg.deadtime)
        self.events(
            "reload-done",
            addresses=self._addresses(),
            added=" ".join(map(str, added)) or None,
            removed=" ".join(map(str, removed)) or None,
            deadtime=self.core.cfg.deadtime,
        )
        await log_check_warnings(cfg, self.events)
        self._flush()

    async def _announce(self, a: netif.Assignment, cfg: config.Config) -> None:
        await self.backend.announce(a, cfg.garp_count, cfg.garp_interval)
