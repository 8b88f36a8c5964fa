"""Kernel settings failoverd changes on the host, and puts back when it stops.

``net.ipv4.conf.<interface>.accept_local``: while failoverd holds the primary's address, the
primary's heartbeats on that interface come *from* an address that is now also ours, and Linux
drops such packets unless ``accept_local`` is on. It is turned on only on the interfaces of
``FAILOVER_PEER_IP_PAIRS`` (the only ones where a held address can be a heartbeat's source), and
turned off again when failoverd stops or a reload drops the interface, if failoverd turned it on.

Which interfaces failoverd turned on is written to ``<FAILOVER_RUN_DIR>/failoverd.accept_local``
before it is done, so a failoverd killed with SIGKILL and restarted still knows them and puts
them back at its own clean stop. ``/run`` is emptied at boot, when the settings are reset too.

What ``accept_local=1`` relaxes (docs/safety.md): on that interface, IPv4 packets whose source
is one of this host's own addresses are accepted instead of being dropped as martians. A host on
that link can then send this host one-way packets that look as if they came from this host's
own addresses; a service that trusts "my own address" as a source must not rely on that.
Loopback sources (127.0.0.0/8) stay refused (that is ``route_localnet``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("ipfailover.hostconf")
CONF = Path("/proc/sys/net/ipv4/conf")
STATE_NAME = "failoverd.accept_local"


class HostConfError(Exception):
    """A setting could not be read or changed; the message names the file."""


class AcceptLocal:
    """accept_local on exactly the interfaces ``need`` names; ``restore`` puts the rest back."""

    def __init__(self, run_dir: str | Path, conf: Path = CONF) -> None:
        self.conf = conf
        self.state = Path(run_dir) / STATE_NAME
        self.changed: set[str] = self._load()  # interfaces we turned on (and will turn off)

    def knob(self, ifname: str) -> Path:
        return self.conf / ifname / "accept_local"

    def need(self, ifnames: Iterable[str]) -> None:
        """Turn it on for ``ifnames`` (recording those we change first); turn it back off on the
        interfaces we had turned on that are no longer named. Raises HostConfError."""
        wanted = set(ifnames)
        for name in sorted(wanted):
            knob = self.knob(name)
            try:
                if knob.read_text().strip() == "1":
                    continue
                self.changed.add(name)
                self._save()
                knob.write_text("1\n")
            except OSError as e:
                raise HostConfError(f"cannot enable {knob}: {e.strerror or e}") from None
            log.info("enabled %s so the primary is heard while we hold its address", knob)
        for name in sorted(self.changed - wanted):
            self._reset(name)
        self._save()

    def restore(self) -> None:
        """Turn it off again wherever we turned it on; never raises."""
        for name in sorted(self.changed):
            self._reset(name)
        with contextlib.suppress(OSError):
            self._save()

    def _reset(self, name: str) -> None:
        knob = self.knob(name)
        try:
            knob.write_text("0\n")
            log.info("reset %s to 0, as it was before failoverd", knob)
        except FileNotFoundError:
            pass  # the interface is gone, and its settings with it
        except OSError as e:
            log.warning("cannot reset %s to 0: %s", knob, e.strerror or e)
            return
        self.changed.discard(name)

    def _load(self) -> set[str]:
        try:
            return set(self.state.read_text().split())
        except FileNotFoundError:
            return set()
        except OSError as e:
            log.warning("cannot read %s: %s", self.state, e.strerror or e)
            return set()

    def _save(self) -> None:
        if not self.changed:
            with contextlib.suppress(FileNotFoundError):
                self.state.unlink()
            return
        tmp = self.state.with_name(f".{STATE_NAME}.{os.getpid()}")
        tmp.write_text("".join(f"{name}\n" for name in sorted(self.changed)))
        os.replace(tmp, self.state)
