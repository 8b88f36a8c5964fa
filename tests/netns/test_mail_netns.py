"""Mail from the real failoverd in the namespace lab, received by a real SMTP server (aiosmtpd).

The SMTP server runs inside the secondary's namespace on 127.0.0.1 (failoverd's
FAILOVER_SMTP_SERVER) and writes every message it accepts, with its envelope, to a file the
test reads. "Server down" is tested twice: nothing listening (connection refused, retried with
backoff) and a server that accepts the connection and never answers (a hung server, which must
not delay a takeover or keep failoverd from stopping). The file is not named test_mail.py
because tests/unit/test_mail.py exists and the test folders are not packages.
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ipfailover.lab.processes import LabProcess
from ipfailover.lab.testbed import Lab
from ipfailover.lab.topology import SERVICE_V4, SERVICE_V6, Network, Node, sh

StartDaemon = Callable[..., LabProcess]

SMTP_PORT = 2525
RECIPIENTS = ["ops@example.org", "root@example.org"]
FAST = {"FAILOVER_INTERVAL": 0.2, "FAILOVER_DEADTIME": 0.8, "FAILOVER_FAILBACK_DELAY": 0.5}
MAIL = {
    "FAILOVER_SMTP_SERVER": f"127.0.0.1:{SMTP_PORT}",
    "FAILOVER_EMAIL_RECIPIENT": " ".join(RECIPIENTS),
}
TIMEOUT = 15.0
BOTH = (Network.PUBLIC, Network.PRIVATE)

SMTP_SINK = r"""
import asyncio, json, sys
from aiosmtpd.smtp import SMTP

port, out = int(sys.argv[1]), sys.argv[2]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        record = {"from": envelope.mail_from, "to": envelope.rcpt_tos,
                  "data": envelope.original_content.decode("utf-8", "replace")}
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print("event=smtp-message to=" + ",".join(envelope.rcpt_tos), flush=True)
        return "250 OK"


async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: SMTP(Handler()), "127.0.0.1", port, reuse_address=True)
    print(f"event=smtp-listening port={port}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
"""

TARPIT = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("event=tarpit-listening", flush=True)
time.sleep(600)
"""


class SmtpServer:
    """aiosmtpd in S's namespace; messages are appended to a JSON-lines file."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.out = lab.tmpdir / "smtp-received.jsonl"

    def start(self) -> LabProcess:
        argv = [sys.executable, "-c", SMTP_SINK, str(SMTP_PORT), str(self.out)]
        proc = self.lab.spawn(Node.SECONDARY, argv, "smtpd")
        proc.wait_event("smtp-listening", 10.0)
        return proc

    def received(self) -> list[tuple[list[str], EmailMessage]]:
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text().splitlines():
            record = json.loads(line)
            text = record["data"].replace("\r\n", "\n")
            msg = email.message_from_string(text, policy=email.policy.default)
            out.append((record["to"], msg))  # type: ignore[arg-type]
        return out

    def wait(self, count: int, timeout: float) -> list[tuple[list[str], EmailMessage]]:
        deadline = time.monotonic() + timeout
        while len(self.received()) < count:
            assert time.monotonic() < deadline, f"{len(self.received())} of {count} mails arrived"
            time.sleep(0.05)
        return self.received()


def status_json(lab: Lab) -> dict[str, Any]:
    """failoverd's `ipfailover status --json` on S."""
    run_dir = lab.node_dirs(Node.SECONDARY)["FAILOVER_RUN_DIR"]
    ipfailover = str(Path(sys.executable).parent / "ipfailover")
    out = sh([ipfailover, "status", "--json", "--run-dir", run_dir])
    (daemon,) = json.loads(out)["daemons"]
    assert isinstance(daemon, dict)
    return daemon


def tarpit(lab: Lab) -> LabProcess:
    proc = lab.spawn(Node.SECONDARY, [sys.executable, "-c", TARPIT, str(SMTP_PORT)], "tarpit")
    proc.wait_event("tarpit-listening", 10.0)
    return proc


def folder(lab: Lab) -> Path:
    path = Path(lab.node_dirs(Node.SECONDARY)["FAILOVER_SCRIPT_DIR"]) / SERVICE_V4
    path.mkdir(mode=0o755, exist_ok=True)
    return path


def spool(lab: Lab) -> list[Path]:
    return sorted(Path(lab.node_dirs(Node.SECONDARY)["FAILOVER_SPOOL_DIR"]).glob("*.json"))


def s_addresses(lab: Lab) -> set[str]:
    links = json.loads(
        sh(["ip", "-n", lab.ns(Node.SECONDARY), "-j", "addr", "show", "dev", "pub0"])
    )
    return {a["local"] for link in links for a in link["addr_info"]}


def start_pair(lab: Lab, start_daemon: StartDaemon, **overrides: Any) -> LabProcess:
    start_daemon(Node.PRIMARY, "heartbeatd", FAILOVER_INTERVAL=FAST["FAILOVER_INTERVAL"])
    fd = start_daemon(Node.SECONDARY, "failoverd", **FAST, **MAIL, **overrides)
    for net in BOTH:
        fd.wait_event("peer-verified", TIMEOUT, network=net.value)
    return fd


def pull_primary(lab: Lab) -> float:
    start = time.monotonic()
    for net in BOTH:
        lab.cable(Node.PRIMARY, net, up=False)
    return start


def test_test_saying_no_takes_nothing_and_mails_the_admin(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    smtp = SmtpServer(lab)
    smtp.start()
    shutil.copy("/bin/false", folder(lab) / "Test")  # Apple's notification-only mode
    marker = folder(lab) / "ran"
    (folder(lab) / "PreAcq10").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (folder(lab) / "PreAcq10").chmod(0o755)
    fd = start_pair(lab, start_daemon)
    since = pull_primary(lab)
    declined = fd.wait_event("acquire-declined", TIMEOUT, since=since)
    assert declined.fields["why"] == "Test said no (exit 1)"
    ((to, msg),) = smtp.wait(1, TIMEOUT)
    assert to == RECIPIENTS
    assert msg["Subject"] == (
        f"[ipfailover] secondary did NOT take over {SERVICE_V4} {SERVICE_V6} from primary: "
        "Test said no (exit 1)"
    )
    assert msg["X-IPFailover-Event"] == "takeover-declined"
    assert msg["X-IPFailover-Notify"] == f"down {SERVICE_V4} {SERVICE_V6}"
    body = msg.get_content()
    addresses = f"pub0:{SERVICE_V4}/24 pub0:{SERVICE_V6}/64"
    for text in ["(node secondary)", "Peer:      primary", "Test: exit 1: no", addresses]:
        assert text in body, text
    for net in BOTH:  # both networks heard the primary shortly before the cables were pulled
        line = next(ln for ln in body.splitlines() if ln.startswith(f"  {net.value} "))
        assert "s ago)" in line
    assert SERVICE_V4 not in s_addresses(lab) and not marker.exists()
    time.sleep(2.0)  # DECLINED: no new attempt while the primary stays silent
    assert len(fd.events("acquire-start", since=since)) == 1


def test_a_flapping_network_is_one_mail_and_a_summary_once_it_settles(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    """Apple's one-network rule, coalesced (ipfailover.core.episodes): the first loss is mailed at
    once; the losses and returns that follow are counted and summed up in one mail once the
    network has not changed for a minute (FAST's 10 dead times are less)."""
    smtp = SmtpServer(lab)
    smtp.start()
    fd = start_pair(lab, start_daemon)
    since = lab.partition(Node.PRIMARY, Network.PRIVATE, drop=True)
    fd.wait_event("anomaly", TIMEOUT, since=since, network="priv0")
    ((to, anomaly),) = smtp.wait(1, TIMEOUT)
    assert to == RECIPIENTS
    assert anomaly["Subject"] == (
        "[ipfailover] secondary: no heartbeats from primary on priv0; nothing taken over"
    )
    assert anomaly["X-IPFailover-Notify"] == f"down {SERVICE_V4} {SERVICE_V6}"
    assert "network anomaly" in anomaly.get_content()
    for flap in range(3):  # back, and lost again twice: no mail for any of it
        back = lab.partition(Node.PRIMARY, Network.PRIVATE, drop=False)
        fd.wait_event("recovered", TIMEOUT, since=back, network="priv0")
        if flap < 2:
            lost = lab.partition(Node.PRIMARY, Network.PRIVATE, drop=True)
            fd.wait_event("anomaly", TIMEOUT, since=lost, network="priv0")
    time.sleep(1.0)  # what would have been mailed is delivered within this
    assert len(smtp.received()) == 1
    (priv,) = [n for n in status_json(lab)["networks"] if n["name"] == "priv0"]
    assert priv["episode"]["losses"] == 3 and priv["episode"]["returns"] == 3
    settled = fd.wait_event("network-settled", 60.0 + TIMEOUT, since=back, network="priv0")
    assert settled.fields["losses"] == "3" and settled.fields["returns"] == "3"
    recovered = smtp.wait(2, TIMEOUT)[1][1]
    assert recovered["Subject"] == (
        "[ipfailover] secondary: heartbeats from primary on priv0 again (after 3 losses)"
    )
    assert recovered["X-IPFailover-Event"] == "recovered"
    assert "heartbeats lost 3 time(s), back 3 time(s)" in recovered.get_content()
    assert len(smtp.received()) == 2 and not fd.events("acquire-start")


def test_mail_waits_while_the_server_is_down_and_arrives_when_it_is_up(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    fd = start_pair(lab, start_daemon)
    since = pull_primary(lab)
    done = fd.wait_event("acquire-done", TIMEOUT, since=since)
    assert float(done.fields["duration"]) < 0.5
    fd.wait_event("mail-deferred", TIMEOUT, since=since)
    assert len(spool(lab)) == 1
    smtp = SmtpServer(lab)
    smtp.start()
    ((to, msg),) = smtp.wait(1, 10.0)  # the next retry is at most a few seconds away
    assert to == RECIPIENTS and msg["X-IPFailover-Event"] == "takeover"
    assert "Connection refused" in fd.events("mail-deferred")[0].fields["error"]
    fd.wait_event("mail-pending", 5.0, since=since, count="0")
    assert spool(lab) == []


def test_a_hung_server_delays_nothing_and_mail_survives_a_failoverd_restart(
    lab: Lab, start_daemon: StartDaemon
) -> None:
    hung = tarpit(lab)
    fd = start_pair(lab, start_daemon)
    since = pull_primary(lab)
    slow = fd.wait_event("acquire-done", TIMEOUT, since=since)
    # stop failoverd while its delivery hangs: it hands back (shutdown) and exits promptly
    stop_began = time.monotonic()
    assert fd.stop(grace=10.0) == 0
    assert time.monotonic() - stop_began < 6.0
    assert not fd.events("mail-sent")
    assert len(spool(lab)) == 2  # the takeover and the shutdown release
    hung.stop()

    smtp = SmtpServer(lab)
    smtp.start()
    restarted = start_daemon(Node.SECONDARY, "failoverd", log_name="failoverd-2", **FAST, **MAIL)
    # the primary is still unplugged: after one dead time it takes over again, server up
    fast = restarted.wait_event("acquire-done", TIMEOUT)
    mails = smtp.wait(3, TIMEOUT)
    events = [msg["X-IPFailover-Event"] for _, msg in mails]
    assert events[:2] == ["takeover", "release"] and events[2] == "takeover"
    first = mails[0][1]
    assert mails[0][0] == RECIPIENTS
    assert first["Subject"].startswith(
        f"[ipfailover] secondary took over {SERVICE_V4} {SERVICE_V6} from primary (peer-silent)"
    )
    assert "Timeline (seconds from the start, duration):" in first.get_content()
    assert "shutdown" in mails[1][1]["Subject"]
    # the hung server did not slow the takeover down
    slow_s, fast_s = float(slow.fields["duration"]), float(fast.fields["duration"])
    assert slow_s < 0.5 and slow_s < fast_s + 0.25, (slow_s, fast_s)
    restarted.wait_event("mail-pending", 5.0, count="0")
