"""The invariant checker: judges a fault run against the promises.

After a fault clears, the right node holds every address within dead time + hold-down + 1 s
(:meth:`Checker.converged`); no address is left where it should not be; transitions never
overlap; no daemon dies (unless the case killed it on purpose); every mail queued arrives
exactly once. Each check appends a :class:`Verdict` and marks the lab's timeline.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from ipfailover.lab.faultrun import PRIMARY, SECONDARY, FaultRun


@dataclass
class Verdict:
    name: str
    ok: bool
    detail: str = ""


class Checker:
    """Judges a run against the promises; each ``check_*`` appends a Verdict."""

    def __init__(self, run: FaultRun) -> None:
        self.run = run
        self.verdicts: list[Verdict] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.verdicts.append(Verdict(name, ok, detail))
        self.run.lab.mark(f"check {name}: {'ok' if ok else 'FAILED'} {detail}")
        return ok

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def converged(self, cleared: float, owner: str = PRIMARY, label: str = "") -> bool:
        """After a fault cleared at ``cleared``: within dead time + hold-down + 1 s the right
        node holds the address (the client hears only it) and the other holds nothing."""
        run = self.run
        assert run.client is not None
        bound = run.settings.settle
        quiet = max(1.0, 5 * run.settings.interval)
        wait_until = cleared + bound + quiet + run.client.reply_timeout + 0.2
        run.sleep(wait_until - time.monotonic())
        probes = run.client.between(cleared + bound, cleared + bound + quiet)
        answered = {p.who for p in probes}
        other = SECONDARY if owner == PRIMARY else PRIMARY
        holds = run.secondary_holds_now()
        ok = bool(probes) and answered == {owner} and holds == (owner == SECONDARY)
        detail = (
            f"{label} probes {bound:.2f}..{bound + quiet:.2f}s after clearing answered by "
            f"{sorted(map(str, answered))}; secondary holds the address: {holds}"
        )
        if owner == PRIMARY:
            ok = ok and run.primary_holds_now()
        ok = ok and other not in answered
        return self.add(f"converged{'-' + label if label else ''}", ok, detail)

    def no_daemon_died(self) -> bool:
        dead = [
            f"{p.label} (exit {p.poll()})"
            for p in self.run.daemons()
            if p.poll() is not None and p.pid not in self.run.killed
        ]
        return self.add("no-daemon-died", not dead, ", ".join(dead))

    def transitions_ordered(self) -> bool:
        """Every failoverd's state changes form one chain (no overlap, none skipped), and no
        transition error was logged. ACQUIRING is logged at debug level only, so a change out
        of it may follow a change into one of the states a takeover starts from."""
        problems: list[str] = []
        for proc in self.run.daemons():
            if not proc.name.startswith("failoverd"):
                continue
            previous: str | None = None
            for line in proc.events("state"):
                old, new = line.fields.get("old"), line.fields.get("new")
                expected = {previous} if previous else {old}
                if previous in ("standby", "probing", "blocked", "declined"):
                    expected.add("acquiring")
                if old not in expected:
                    problems.append(f"{proc.label}: {old}->{new} after {previous}")
                previous = new
            problems += [f"{proc.label}: {ln.text}" for ln in proc.events("transition-error")]
        return self.add("transitions-ordered", not problems, "; ".join(problems[:3]))

    def no_stray(self) -> bool:
        """At the end (every fault cleared, the primary up): the primary holds its addresses and
        the secondary none."""
        s, p = self.run.secondary_holds_now(), self.run.primary_holds_now()
        return self.add("no-stray-address", not s and p, f"secondary holds: {s}; primary: {p}")

    def mail_exactly_once(self, timeout: float = 20.0) -> bool:
        """Every mail any failoverd queued reached the SMTP sink once (waits up to ``timeout``
        for the outbox to drain).

        Mails are told apart by their Message-ID, which is made when the notice is spooled and
        kept by every re-delivery. Queued means a ``mail-queued`` event, or a ``mail-sent`` one
        for a spool item whose ``mail-queued`` line a SIGKILL cut off (the spool write was done,
        the log line not yet). A mail received twice is a failure, except that each SIGKILL of
        a failoverd may cause one: killed after the server accepted a mail and before the spool
        forgot it, the restarted daemon sends it again, with the same Message-ID (SMTP has no
        way to make that exactly once; docs/reliability.md, case 8)."""
        sink = self.run.mail
        if sink is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            mailers = [p for p in self.run.daemons() if p.name.startswith("failoverd")]
            ids = {
                ln.fields.get("id", "")
                for p in mailers
                for kind in ("mail-queued", "mail-sent")
                for ln in p.events(kind)
            }
            queued = Counter(
                ln.fields.get("subject", "") for p in mailers for ln in p.events("mail-queued")
            )
            received = sink.received()
            first = dict(reversed([(mid, subject) for subject, mid in received]))
            distinct = Counter(first.values())
            expected = len(ids)
            if (not queued - distinct and len(first) >= expected) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        twice = Counter(mid for _, mid in received) - Counter(first.keys())
        kills = sum(1 for p in mailers if p.pid in self.run.killed)
        missing = queued - distinct
        detail = (
            f"{expected} queued, {len(received)} received ({len(first)} distinct)"
            + (f"; missing {dict(missing)}" if missing else "")
            + (f"; more than queued: {len(first) - expected}" if len(first) > expected else "")
            + (f"; {sum(twice.values())} sent again after {kills} SIGKILL(s)" if twice else "")
        )
        ok = not missing and len(first) == expected and sum(twice.values()) <= kills
        return self.add("mail-exactly-once", ok, detail)

    def finish(self) -> None:
        self.no_daemon_died()
        self.transitions_ordered()
        self.no_stray()
        self.mail_exactly_once()
