"""The Prometheus endpoint's content, rendered from a daemon snapshot taken on its event loop."""

from __future__ import annotations

import asyncio
import copy
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from test_status import FAILOVERD

from ipfailover.shell import metrics


def scrape(snapshot: dict[str, object]) -> str:
    async def main() -> str:
        registry = CollectorRegistry()
        registry.register(metrics.SnapshotCollector(asyncio.get_running_loop(), lambda: snapshot))
        return (await asyncio.to_thread(generate_latest, registry)).decode()

    return asyncio.run(main())


def test_failoverd_metrics() -> None:
    snap = copy.deepcopy(FAILOVERD)
    snap["counts"] = {
        "transitions": {"acquire": {"done": 2}, "release": {"done": 1}},
        "script_runs": 6,
        "script_failures": 1,
    }
    snap["last_takeover_seconds"] = 0.004
    text = scrape(snap)
    assert 'ipfailover_state{state="active"} 1.0' in text
    assert 'ipfailover_state{state="standby"} 0.0' in text
    assert 'ipfailover_heartbeats_received_total{network="pub0"} 120.0' in text
    assert 'ipfailover_rejected_datagrams_total{reason="bad-auth"} 1.0' in text
    assert 'ipfailover_transitions_total{action="acquire",outcome="done"} 2.0' in text
    assert "ipfailover_last_takeover_seconds 0.004" in text
    assert "ipfailover_script_failures_total 1.0" in text
    assert "ipfailover_mail_pending 2.0" in text


def test_endpoint_serves_over_http() -> None:
    snap = {"role": "heartbeatd", "sent": 7, "rejected": {"malformed": 3}}

    async def main() -> str:
        loop = asyncio.get_running_loop()
        server = metrics.serve("127.0.0.1", 0, loop, lambda: snap)
        url = f"http://127.0.0.1:{server.server_port}/metrics"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()

        try:
            return await asyncio.to_thread(get)
        finally:
            server.shutdown()

    text = asyncio.run(main())
    assert "ipfailover_heartbeats_sent_total 7.0" in text
    assert 'ipfailover_rejected_datagrams_total{reason="malformed"} 3.0' in text


def test_every_monitor_state_has_a_gauge() -> None:
    """The gauge's states are listed by hand (the metrics module does not import the core's
    enums for one tuple); a new state must be added there too."""
    from ipfailover.core.monitor import State
    from ipfailover.shell.metrics import STATES

    assert list(STATES) == [s.value for s in State if s is not State.STOPPED]
