"""Transition scripts with the real failoverd (and ``ipfailover process``) in the namespace lab.

heartbeatd runs on the primary (P) and failoverd on the secondary (S). The scripts live in S's
script folder, ``<FAILOVER_SCRIPT_DIR>/203.0.113.10/`` (the lab's first pair). Each records its
name, the action, start and end times, and whether the service address was on S's interface at
that moment, as S's own ``ip addr`` shows it. So the order and the timing relative to the address
change are observed, not inferred from failoverd's log. No SMTP server runs here: mail stays in
S's spool, where the tests read it (real delivery is tested in test_mail_netns.py).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipfailover.lab.processes import LabProcess, daemon_command
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import SERVICE_V4, Network, Node

StartDaemon = Callable[..., LabProcess]

FAST = {"FAILOVER_INTERVAL": 0.2, "FAILOVER_DEADTIME": 0.8, "FAILOVER_FAILBACK_DELAY": 0.5}
NO_SMTP = {"FAILOVER_SMTP_SERVER": "127.0.0.1:2"}  # nothing listens: mail stays spooled
TIMEOUT = 15.0
BOTH = (Network.PUBLIC, Network.PRIVATE)

RECORDER = """#!/bin/sh
start=$(date +%s.%N)
if ip -o -4 addr show dev pub0 | grep -q ' 203.0.113.10/'; then present=yes; else present=no; fi
sleep 0.05
echo "$(basename "$0") $IPFAILOVER_ACTION $IPFAILOVER_REASON $present $start $(date +%s.%N)" \
    >> "$IPFAILOVER_SCRIPT_DIR/../record"
"""


def folder(lab: Lab) -> Path:
    path = Path(lab.node_dirs(Node.SECONDARY)["FAILOVER_SCRIPT_DIR"]) / SERVICE_V4
    path.mkdir(mode=0o755, exist_ok=True)
    return path


def script(lab: Lab, name: str, body: str = RECORDER, mode: int = 0o755) -> Path:
    path = folder(lab) / name
    path.write_text(body)
    path.chmod(mode)
    return path


def records(lab: Lab) -> list[dict[str, Any]]:
    path = folder(lab).parent / "record"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        name, action, reason, present, start, end = line.split()
        out.append(
            {"name": name, "action": action, "reason": reason, "present": present == "yes",
             "start": float(start), "end": float(end)}
        )  # fmt: skip
    return out


def s_has_service_address(lab: Lab) -> bool:
    out = subprocess.run(
        ["ip", "-n", lab.ns(Node.SECONDARY), "-j", "addr", "show", "dev", "pub0"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    return any(a["local"] == SERVICE_V4 for link in json.loads(out) for a in link["addr_info"])


def spooled_mail(lab: Lab) -> list[dict[str, Any]]:
    spool = Path(lab.node_dirs(Node.SECONDARY)["FAILOVER_SPOOL_DIR"])
    return [json.loads(p.read_text()) for p in sorted(spool.glob("*.json"))]


def start_pair(lab: Lab, start_daemon: StartDaemon, **overrides: Any) -> LabProcess:
    """heartbeatd on P, failoverd on S; returns failoverd once it verified P on both networks."""
    start_daemon(Node.PRIMARY, "heartbeatd", FAILOVER_INTERVAL=FAST["FAILOVER_INTERVAL"])
    fd = start_daemon(Node.SECONDARY, "failoverd", **FAST, **NO_SMTP, **overrides)
    for net in BOTH:
        fd.wait_event("peer-verified", TIMEOUT, network=net.value)
    return fd


def pull_primary(lab: Lab, up: bool) -> float:
    start = time.monotonic()
    for net in BOTH:
        lab.cable(Node.PRIMARY, net, up=up)
    return start


def test_scripts_run_in_order_around_the_address_change(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    for name in ["Test", "PreAcq10.a", "PreAcq20.b", "PostAcq10.c", "PostAcq20.d",
                 "PreRel10.e", "PostRel10.f"]:  # fmt: skip
        script(lab, name)
    fd = start_pair(lab, start_daemon)
    since = pull_primary(lab, up=False)
    done = fd.wait_event("acquire-done", TIMEOUT, since=since)
    acquired = records(lab)
    assert [(r["name"], r["present"]) for r in acquired] == [
        ("Test", False), ("PreAcq10.a", False), ("PreAcq20.b", False),
        ("PostAcq10.c", True), ("PostAcq20.d", True),
    ]  # fmt: skip
    assert {(r["action"], r["reason"]) for r in acquired} == {("acquire", "peer-silent")}
    for before, after in itertools.pairwise(acquired):
        assert before["end"] <= after["start"], "scripts of a transition overlapped"
    # Post scripts start only after the first round of announcements went out
    lines = [ln.fields for ln in fd.events(since=since)]
    order = [f.get("event") + ":" + f.get("script", f.get("round", "")) for f in lines]
    assert order.index("script-done:PreAcq20.b") < order.index("announced:1")
    assert order.index("announced:1") < order.index("script-done:PostAcq10.c")
    assert float(done.fields["changed-at"]) < float(done.fields["duration"])
    assert done.fields["scripts"] == "5" and "script-problems" not in done.fields

    since = pull_primary(lab, up=True)
    fd.wait_event("release-done", TIMEOUT, since=since)
    fd.wait_event("mail-queued", TIMEOUT, since=since, **{"mail-event": "release"})
    released = records(lab)[len(acquired) :]
    assert [(r["name"], r["action"], r["present"]) for r in released] == [
        ("Test", "release", True), ("PreRel10.e", "release", True),
        ("PostRel10.f", "release", False),
    ]  # fmt: skip
    assert {r["reason"] for r in released} == {"peer-heard"}
    assert not s_has_service_address(lab)
    events = [m["event"] for m in spooled_mail(lab)]
    # a re-plugged cable can take the kernel up to ~1 s (linkwatch), more than the dead time:
    # then the later network is briefly an anomaly, which is mailed too
    assert [e for e in events if e not in ("anomaly", "recovered")] == ["takeover", "release"]


def test_a_hanging_script_is_killed_on_its_timeout_and_the_takeover_completes(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    script(lab, "PreAcq10.hang", "#!/bin/sh\nsleep 300 & echo $! > hang.pid\nsleep 300\n")
    script(lab, "PreAcq20.after")
    script(lab, "PostAcq10.after")
    for net in BOTH:  # the primary is gone from the start: failoverd takes over one dead time in
        lab.cable(Node.PRIMARY, net, up=False)
    fd = start_daemon(Node.SECONDARY, "failoverd", **FAST, **NO_SMTP, FAILOVER_SCRIPT_TIMEOUT=1)
    timeout = fd.wait_event("script-timeout", TIMEOUT, script="PreAcq10.hang")
    done = fd.wait_event("acquire-done", TIMEOUT)
    assert 1.0 <= float(timeout.fields["duration"]) < 2.0
    assert 1.0 <= float(done.fields["changed-at"]) < 2.5
    assert done.fields["outcome"] == "done" and done.fields["script-problems"] == "1"
    assert [(r["name"], r["present"]) for r in records(lab)] == [
        ("PreAcq20.after", False), ("PostAcq10.after", True),
    ]  # fmt: skip
    assert s_has_service_address(lab)
    pid = int((folder(lab) / "hang.pid").read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the hanging script's child survived the timeout"
    fd.wait_event("mail-queued", TIMEOUT)  # queued right after acquire-done
    (mail,) = spooled_mail(lab)
    assert mail["subject"].endswith("-- 1 script(s) failed or refused")
    assert "killed after the 1 s timeout" in mail["message"]


def test_a_world_writable_script_is_refused_with_one_log_line_and_mail(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    script(lab, "PostAcq10.open", mode=0o777)
    script(lab, "PostAcq20.fine")
    for net in BOTH:
        lab.cable(Node.PRIMARY, net, up=False)
    fd = start_daemon(Node.SECONDARY, "failoverd", **FAST, **NO_SMTP)
    done = fd.wait_event("acquire-done", TIMEOUT)
    refused = fd.events("script-refused")
    assert len(refused) == 1 and refused[0].fields["script"] == "PostAcq10.open"
    assert "ERROR" in refused[0].text
    assert "writable by group and others (mode 0777)" in refused[0].fields["detail"]
    assert [r["name"] for r in records(lab)] == ["PostAcq20.fine"]  # the other one still ran
    assert done.fields["outcome"] == "done" and s_has_service_address(lab)
    fd.wait_event("mail-queued", TIMEOUT)
    (mail,) = spooled_mail(lab)
    assert mail["event"] == "takeover" and "1 script(s) failed or refused" in mail["subject"]
    assert "REFUSED" in mail["message"] and "mode 0777" in mail["message"]


def process(lab: Lab, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*daemon_command("ipfailover"), "process", "--config", str(config), *args]
    return subprocess.run(
        ["ip", "netns", "exec", lab.ns(Node.SECONDARY), *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_process_by_hand_runs_the_same_scripts_and_is_refused_while_failoverd_manages(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    for name in ["Test", "PreAcq10", "PostAcq10", "PreRel10", "PostRel10"]:
        script(lab, name)
    for net in BOTH:
        lab.cable(Node.PRIMARY, net, up=False)
    config = lab.node_config(Node.SECONDARY, filename="process.conf", **NO_SMTP)

    down = process(lab, config, "down", f"pub0:{SERVICE_V4}/24")  # Apple's word for acquire
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith(f"acquired pub0:{SERVICE_V4}/24 in ")
    assert "not delivered yet" in down.stderr  # no SMTP server: the mail waits in the spool
    assert s_has_service_address(lab)
    up = process(lab, config, "up", f"pub0:{SERVICE_V4}/24")
    assert up.returncode == 0, up.stderr
    assert not s_has_service_address(lab)
    assert [(r["name"], r["action"], r["reason"], r["present"]) for r in records(lab)] == [
        ("Test", "acquire", "manual", False), ("PreAcq10", "acquire", "manual", False),
        ("PostAcq10", "acquire", "manual", True), ("Test", "release", "manual", True),
        ("PreRel10", "release", "manual", True), ("PostRel10", "release", "manual", False),
    ]  # fmt: skip
    assert [m["event"] for m in spooled_mail(lab)] == ["takeover", "release"]

    fd = start_daemon(Node.SECONDARY, "failoverd", **FAST, **NO_SMTP)
    fd.wait_event("start", TIMEOUT)
    refused = process(lab, config, "acquire", f"pub0:{SERVICE_V4}")
    assert refused.returncode == 3
    assert f"refused: failoverd (pid {fd.pid}) manages {SERVICE_V4}" in refused.stderr
    assert "failoverd.lock" in refused.stderr
    # nothing ran by hand (failoverd itself may take over meanwhile: the primary is down)
    assert [r for r in records(lab)[6:] if r["reason"] == "manual"] == []
