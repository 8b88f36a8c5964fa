"""The opt-in Prometheus endpoint (FAILOVER_METRICS="host:port"), built on prometheus-client.

Metrics are made at scrape time from the same snapshot the control socket serves, taken on the
daemon's event loop, so the two can never disagree and nothing is updated on the hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ipfailover.shell import snapshot as shape

Snapshot = Callable[[], shape.Snapshot]
STATES = (
    "standby",
    "probing",
    "blocked",
    "acquiring",
    "active",
    "holddown",
    "handback",
    "releasing",
    "declined",
    "stopping",
)


class SnapshotCollector(Collector):
    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot: Snapshot) -> None:
        self.loop = loop
        self.snapshot = snapshot

    def _take(self) -> shape.Snapshot:
        async def take() -> shape.Snapshot:
            return self.snapshot()

        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(timeout=5.0)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        d = self._take()
        rejected = CounterMetricFamily(
            "ipfailover_rejected_datagrams", "Datagrams dropped, by reason", labels=["reason"]
        )
        for reason, n in sorted(d["rejected"].items()):
            rejected.add_metric([reason], n)
        yield rejected
        collision = d.get("name_collision")
        yield GaugeMetricFamily(
            "ipfailover_name_collision",
            "1 while another machine sends under this node name",
            value=1.0 if collision and collision.get("active") else 0.0,
        )
        yield CounterMetricFamily(
            "ipfailover_name_collision_datagrams",
            "Fresh datagrams carrying this node name from a boot that is not this host's",
            value=collision.get("datagrams", 0) if collision else 0,
        )
        if d["role"] == "heartbeatd":
            yield CounterMetricFamily(
                "ipfailover_heartbeats_sent", "Heartbeat datagrams sent", value=d["sent"]
            )
            return
        yield from _failoverd_metrics(d)


def _failoverd_metrics(
    d: shape.FailoverdSnapshot,
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    state = GaugeMetricFamily("ipfailover_state", "1 for the current state", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1.0 if d["state"] == name else 0.0)
    yield state
    yield GaugeMetricFamily(
        "ipfailover_holding", "1 while this node holds the peer's addresses", value=d["holding"]
    )
    received = CounterMetricFamily(
        "ipfailover_heartbeats_received",
        "Verified heartbeats from the peer, per network",
        labels=["network"],
    )
    alive = GaugeMetricFamily(
        "ipfailover_network_alive", "1 while the peer is heard on the network", labels=["network"]
    )
    for net in d["networks"]:
        received.add_metric([net["name"]], net["heartbeats"])
        alive.add_metric([net["name"]], 1.0 if net["alive"] else 0.0)
    yield received
    yield alive
    transitions = CounterMetricFamily(
        "ipfailover_transitions", "Takeovers and releases", labels=["action", "outcome"]
    )
    for action, outcomes in sorted(d["counts"]["transitions"].items()):
        for outcome, n in sorted(outcomes.items()):
            transitions.add_metric([action, outcome], n)
    yield transitions
    last = d.get("last_takeover_seconds")
    if last is not None:
        yield GaugeMetricFamily(
            "ipfailover_last_takeover_seconds", "Duration of the last takeover", value=last
        )
    runs = CounterMetricFamily("ipfailover_script_runs", "Transition scripts run")
    runs.add_metric([], d["counts"]["script_runs"])
    yield runs
    failures = CounterMetricFamily(
        "ipfailover_script_failures",
        "Scripts that failed, timed out, were refused or could not start",
    )
    failures.add_metric([], d["counts"]["script_failures"])
    yield failures
    yield GaugeMetricFamily(
        "ipfailover_mail_pending", "Notifications waiting in the spool", value=d["mail"]["pending"]
    )


def serve(host: str, port: int, loop: asyncio.AbstractEventLoop, snapshot: Snapshot) -> WSGIServer:
    """Start the endpoint; it runs in prometheus-client's thread until the process exits."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(loop, snapshot))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
