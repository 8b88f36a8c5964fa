"""The lab's SMTP sink delivers and logs each mail (issue 11: the lab's timeline was full of
"connection refused" retries). Runs in a fresh anonymous network namespace."""

from __future__ import annotations

import subprocess
import sys

SEND = (
    "import smtplib, time\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        s = smtplib.SMTP('localhost', 2525, timeout=5); break\n"
    "    except OSError: time.sleep(0.1)\n"
    "s.sendmail('root@lab', ['root@localhost'], "
    "'Subject: [ipfailover] secondary took over 203.0.113.10\\n\\nbody\\n'); s.quit()\n"
)


def test_the_sink_accepts_and_logs_a_mail() -> None:
    py = sys.executable
    script = (
        "ip link set lo up\n"
        f"{py} -m ipfailover.lab.mail --port 2525 & sink=$!\n"
        f'{py} -c "$SEND"; status=$?\n'
        "kill -TERM $sink; wait $sink; exit $status\n"
    )
    res = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"SEND": SEND, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "event=smtp-sink-ready port=2525"
    assert lines[1] == (
        'event=mail-received sender=root@lab to=root@localhost subject="[ipfailover] secondary '
        'took over 203.0.113.10"'
    )
