"""Fixtures for tests that run the real daemons inside a throwaway namespace lab.

``lab`` yields a built :class:`ipfailover.lab.testbed.Lab` (primary, secondary, client and
switch namespaces; see that module for the addresses) and always tears it down.
The factory fixtures wrap the Lab helpers most end-to-end tests need:

* ``start_daemon(node, "heartbeatd"|"failoverd", **overrides)`` writes the node's
  hostconfig (overrides are ``FAILOVER_*`` variables) and starts the daemon;
  the returned process has ``wait_event(event, timeout, since=..., **fields)``.
* ``start_client(target=SERVICE_V4, **opts)`` starts probe responders on P and S
  (once) and a probe client on C; the returned ``ProbeMonitor`` reads outcomes
  live (``wait_first``, ``wait_settled``, ``who_answers``, ``lost``).
* ``who_answers(target=SERVICE_V4, window=0.3)`` probes for a short window and
  returns a Counter of responder names (None = lost); responders started once.

These tests need root, iproute2 and nftables; they fail (never skip) without.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipfailover.lab.processes import LabProcess, ProbeMonitor
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import SERVICE_V4, Node


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A freshly built lab; logs and configs stay in tmp_path/lab for post-mortems."""
    with Lab(tmpdir=tmp_path / "lab") as built:
        yield built


class _Responders:
    """Starts the probe responders on first use, so several helpers can share them."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.started = False

    def ensure(self) -> None:
        if not self.started:
            self.lab.start_responders()
            self.started = True


@pytest.fixture
def responders(lab: Lab) -> _Responders:
    """Lazily started probe responders on P and S (shared by client helpers)."""
    return _Responders(lab)


@pytest.fixture
def start_daemon(lab: Lab) -> Callable[..., LabProcess]:
    """Factory: write a node's hostconfig with FAILOVER_* overrides and start a daemon."""

    def start(
        node: Node, daemon: str, *, log_name: str | None = None, **overrides: Any
    ) -> LabProcess:
        config = lab.node_config(node, filename=f"{log_name or daemon}.conf", **overrides)
        return lab.start_daemon(node, daemon, config, log_name=log_name)

    return start


@pytest.fixture
def start_client(lab: Lab, responders: _Responders) -> Callable[..., ProbeMonitor]:
    """Factory: ensure responders run, start a probe client on C, return its monitor."""

    def start(target: str = SERVICE_V4, **options: Any) -> ProbeMonitor:
        responders.ensure()
        return lab.start_client(target, **options)

    return start


@pytest.fixture
def who_answers(lab: Lab, responders: _Responders) -> Callable[..., Counter[str | None]]:
    """Factory: who answers target over a short window (Counter; None = lost)."""

    def sample(
        target: str = SERVICE_V4, window: float = 0.3, **options: Any
    ) -> Counter[str | None]:
        responders.ensure()
        return lab.sample(target, duration=window, **options)

    return sample
