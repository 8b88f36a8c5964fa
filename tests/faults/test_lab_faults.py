"""Issue 8's fault cases 1-7 and 12 in their short CI form: the real daemons in the namespace
lab, a fault from ipfailover.lab.faults, and the invariant checker on every run.

Each case builds its own lab (unique names), runs at a short interval with fixed seeds and
lengths, and must pass every check: after the fault clears the primary alone answers within
dead time + hold-down + 1 s, no address is left on the secondary, failoverd's transitions form
one chain, no daemon died that the case did not kill, and every queued mail reached the lab's
SMTP sink exactly once. The full-length runs are ``ipfailover lab --faults NAME --minutes N``
(see docs/reliability.md). These tests need root, iproute2, nftables and aiosmtpd.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ipfailover.lab import cases as labcases
from ipfailover.lab import faults as labfaults
from ipfailover.lab.cases import CaseParams, CaseResult
from ipfailover.lab.faultrun import Settings


def run(
    name: str, seconds: float, *, interval: float = 0.1, loss: int = 30, seed: int = 8
) -> CaseResult:
    result = labcases.run_case(
        name, Settings(interval=interval), CaseParams(seconds, random.Random(seed), loss)
    )
    failed = [f"{v.name}: {v.detail}" for v in result.verdicts if not v.ok]
    assert result.error is None, result.error
    assert not failed, failed
    return result


def test_loss_on_both_networks_then_clean_failback() -> None:
    """Case 1 (30 s of 30 % loss): whatever it took over, it hands back and keeps its promises.
    The false-takeover rate itself is a figure, not an assertion (docs/reliability.md)."""
    result = run("loss", 30.0)
    assert result.metrics["rounds"] >= 250


def test_one_network_loss_or_partition_is_an_anomaly_never_a_takeover() -> None:
    """Case 2: each one-network fault (both ways, one way, 50 % loss) for 5 s."""
    result = run("one-network", 30.0)
    assert all(v["takeovers"] == 0 for v in result.metrics.values())


def test_flapping_primary_gets_its_addresses_back_once_it_settles() -> None:
    """Case 3 at interval 0.2 s (where issue 8 measured 10 owner changes in 20 s).

    One takeover, and the clients see at most two owner changes (the takeover and the hand-back
    after the flapping): the flapping primary is not handed its addresses back while it flaps,
    and its carrier announcement after a cut waits for the takeover instead of crossing it (4
    changes were seen once in CI before it did). heartbeatd reports its cuts, so the takeover is
    the primary's own word (peer-cut-off), unless the silence of the first cut already decided
    it (docs/reliability.md, case 3)."""
    result = run("flap", 20.0, interval=0.2)
    assert result.metrics["takeovers"] == 1, result.metrics
    assert result.metrics["owner_changes"] <= 2, result.metrics
    assert result.metrics["takeover_reasons"] in (["peer-cut-off"], ["peer-silent"]), result.metrics


def test_frozen_primary_one_takeover_then_failback() -> None:
    """Case 4: SIGSTOP heartbeatd for two dead times, then SIGCONT."""
    result = run("freeze", 0.0)
    assert result.metrics["takeovers"] == 1


def test_sigkill_failoverd_in_every_state_then_restart() -> None:
    """Case 5: standby, acquiring and releasing (slow scripts), active, holddown."""
    result = run("kill-failoverd", 0.0)
    assert set(result.metrics) == {"standby", "acquiring", "active", "holddown", "releasing"}


def test_sigkill_heartbeatd_then_restart() -> None:
    """Case 6: takeover after the dead time, then failback after the restart."""
    result = run("kill-heartbeatd", 2.0)
    assert result.metrics["takeover_s"] is not None


def test_secondary_cables_pulled_while_standby() -> None:
    """Case 7: no takeover of the live primary once the cables are back, no stuck state."""
    result = run("secondary-cables", 3.0)
    assert result.metrics["client_answers_from_secondary"] == 0


def test_soak_two_minutes() -> None:
    """Case 12 in CI form: 2 minutes at interval 0.05 s, seed 12."""
    result = run("soak", 120.0, interval=0.05, seed=12)
    assert result.metrics["episodes"] >= 5


def test_nft_rules_for_loss_and_one_way_partitions(tmp_path: Path) -> None:
    """The injector's rules: numgen for loss, plain drop for a partition, per direction."""
    from ipfailover.lab.testbed import Lab
    from ipfailover.lab.topology import Network, Node

    lab = Lab(tmpdir=tmp_path)  # not built: only the rule text is looked at
    faults = labfaults.FaultInjector(lab)
    loss = faults.nft_script([labfaults.Drop(Node.SECONDARY, 30)])
    assert 'iifname "pub0" udp dport 1694 numgen random mod 100 < 30 drop' in loss
    assert 'oifname "priv0" udp sport 1694 numgen random mod 100 < 30 drop' in loss
    one_way = faults.nft_script(
        [labfaults.Drop(Node.SECONDARY, 100, Network.PUBLIC, labfaults.Direction.IN)]
    )
    assert 'iifname "pub0" udp dport 1694 drop' in one_way
    assert "oifname" not in one_way and "priv0" not in one_way
    assert faults.nft_script([]).count("table") == 2  # create-then-delete: nothing left


@pytest.mark.parametrize("name", list(labcases.CASES))
def test_every_case_has_a_full_length(name: str) -> None:
    assert labcases.plan([name], 1.0)
