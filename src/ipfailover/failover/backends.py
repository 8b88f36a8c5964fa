"""What the executor drives: the address backend (netlink in production, a fake in tests), the
announcement settings and the notifier (the mail outbox); and what failoverd asks of the executor
(:class:`TransitionExecutor`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ipfailover import mail
from ipfailover.failover.record import TransitionRecord
from ipfailover.shell import announce as announcing
from ipfailover.shell import netbatch, netif
from ipfailover.shell import scripts as hooks


class AddressBackend(Protocol):
    """Adds, deletes and announces addresses (netlink in production, a fake in tests)."""

    async def add(self, a: netif.Assignment) -> bool: ...

    async def delete(self, a: netif.Assignment) -> bool: ...

    async def announce(self, a: netif.Assignment, count: int, interval: float) -> int: ...


@runtime_checkable
class BatchBackend(AddressBackend, Protocol):
    """A backend that changes and announces many addresses at once (one netlink socket, one
    packet socket): what a takeover of a thousand addresses needs to stay within 0.1 s."""

    async def add_all(
        self, addresses: Sequence[netif.Assignment], on_chunk: netbatch.OnChunk | None = None
    ) -> list[bool | netif.NetifError]: ...

    async def delete_all(
        self, addresses: Sequence[netif.Assignment]
    ) -> list[bool | netif.NetifError]: ...

    def announcer(self, addresses: Sequence[netif.Assignment]) -> announcing.Announcer: ...


class NetlinkBackend:
    """The real thing: :mod:`ipfailover.shell.netif` in the current network namespace, with
    the requests of the current addresses encoded once (:class:`netbatch.AddressBatch`)."""

    def __init__(self) -> None:
        self._batch: netbatch.AddressBatch | None = None

    def prepare(self, addresses: Sequence[netif.Assignment]) -> None:
        """Encode the requests for these addresses now, off the takeover's path."""
        self._batch_for(addresses).prepare()

    def _batch_for(self, addresses: Sequence[netif.Assignment]) -> netbatch.AddressBatch:
        if self._batch is None or self._batch.assignments != tuple(addresses):
            self._batch = netbatch.AddressBatch(addresses)
        return self._batch

    async def add(self, a: netif.Assignment) -> bool:
        return await netif.add(a)

    async def delete(self, a: netif.Assignment) -> bool:
        return await netif.delete(a)

    async def announce(self, a: netif.Assignment, count: int, interval: float) -> int:
        return await announcing.announce(a, count, interval)

    async def add_all(
        self, addresses: Sequence[netif.Assignment], on_chunk: netbatch.OnChunk | None = None
    ) -> list[bool | netif.NetifError]:
        return await self._batch_for(addresses).add(on_chunk)

    async def delete_all(
        self, addresses: Sequence[netif.Assignment]
    ) -> list[bool | netif.NetifError]:
        return await self._batch_for(addresses).delete()

    def announcer(self, addresses: Sequence[netif.Assignment]) -> announcing.Announcer:
        return announcing.Announcer(addresses)


class Notifier(Protocol):
    async def submit(self, notice: mail.Notice) -> object: ...


@dataclass(frozen=True)
class Announcing:
    """FAILOVER_GARP_COUNT announcements per address, FAILOVER_GARP_INTERVAL apart."""

    count: int
    interval: float


class TransitionExecutor(Protocol):
    """What failoverd asks of its executor: :class:`Executor`, or a fake in a test."""

    async def acquire(
        self, reason: str, situation: mail.Situation, *, gate: bool = True
    ) -> TransitionRecord: ...

    async def release(
        self, reason: str, situation: mail.Situation, *, gate: bool
    ) -> TransitionRecord: ...

    async def prepare(self) -> None: ...

    async def flush_mail(self) -> None: ...

    def reconfigure(
        self,
        addresses: Sequence[netif.Assignment],
        scripts: hooks.HookRunner,
        announcing: Announcing,
    ) -> None: ...
