"""The mail text of failoverd: one transition's outcome, timeline and scripts; a takeover held
back because the address still answers; an address conflict while holding."""

from __future__ import annotations

from ipfailover import mail
from ipfailover.failover.record import Action, Outcome, TransitionRecord

MAIL_OUTPUT_CHARS = 2000  # characters of a script's output quoted in the mail


def _ips(rec: TransitionRecord) -> tuple[str, ...]:
    return tuple(a.split(":", 1)[1].rsplit("/", 1)[0] for a in rec.addresses)


def transition_subject(rec: TransitionRecord, s: mail.Situation) -> str:
    ips, peer = " ".join(_ips(rec)), s.peer
    retry = {"manual": "", "shutdown": "; gave up, exiting while still holding them"}.get(
        rec.reason, "; retrying after the hold-down"
    )
    acquire = {
        Outcome.DONE: f"took over {ips} from {peer} ({rec.reason})",
        Outcome.PARTIAL: f"took over only part of {ips} from {peer} ({rec.reason})",
        Outcome.DECLINED: f"did NOT take over {ips} from {peer}: {rec.why}",
        Outcome.FAILED: f"FAILED to take over {ips} from {peer}: {rec.why}; gave up",
    }
    release = {
        Outcome.DONE: f"released {ips} to {peer} ({rec.reason})",
        Outcome.DECLINED: f"keeps {ips}: {rec.why}{retry}",
        Outcome.FAILED: f"FAILED to release {ips}: {rec.why}{retry}",
    }
    table = acquire if rec.action is Action.ACQUIRE else release
    text = f"[ipfailover] {s.node} {table.get(rec.outcome, rec.outcome)}"
    problems = len(rec.script_problems)
    if problems:
        text += f" -- {problems} script(s) failed or refused"
    return text


def timeline_text(rec: TransitionRecord) -> str:
    """Steps and scripts in time order, each with its start offset and duration."""
    rows = [(round(st.start, 6), 0, f"{st.name}: {st.detail}", st.duration) for st in rec.steps]
    rows += [
        (round(r.started - rec.started, 6), 1, f"  {r.name}: {r.detail}", r.duration)
        for r in rec.scripts
    ]  # a step sorts before its own scripts, which start when it does
    lines = [f"  {start:+8.3f}  {dur:7.3f} s  {text}" for start, _, text, dur in sorted(rows)]
    lines.append(f"  {rec.duration:+8.3f}             {rec.outcome}")
    return "\n".join(lines)


def scripts_text(rec: TransitionRecord) -> str:
    if not rec.scripts:
        return "  (none ran)"
    width = max(len(r.name) for r in rec.scripts)
    out = []
    for r in rec.scripts:
        out.append(f"  {r.name:<{width}}  {r.status.upper():<8} {r.duration:7.3f} s  {r.detail}")
        text = r.output.strip()
        if len(text) > MAIL_OUTPUT_CHARS:
            text = text[:MAIL_OUTPUT_CHARS] + f"\n[{len(text) - MAIL_OUTPUT_CHARS} more characters]"
        out += [f"      | {line}" for line in text.splitlines()]
    return "\n".join(out)


def transition_notice(rec: TransitionRecord, s: mail.Situation, now: float) -> mail.Notice:
    """The mail about one transition: the situation, outcome, timeline and each script."""
    event = "takeover" if rec.action is Action.ACQUIRE else "release"
    if not rec.ok:
        event += f"-{rec.outcome}"
    changed = "" if rec.changed_at is None else f"; addresses changed at +{rec.changed_at:.3f} s"
    body = [
        transition_subject(rec, s).removeprefix("[ipfailover] "),
        "",
        mail.situation_text(s, now),
        "",
        f"Action:    {rec.action} ({rec.reason}), started {mail.format_time(rec.started_wall)}",
        f"Outcome:   {rec.outcome} in {rec.duration:.3f} s{changed}",
    ]
    if rec.why:
        body.append(f"Why:       {rec.why}")
    body += [f"Error:     {e}" for e in rec.errors]
    body += ["", "Timeline (seconds from the start, duration):", timeline_text(rec)]
    body += ["", "Scripts:", scripts_text(rec), ""]
    direction = "down" if rec.action is Action.ACQUIRE else "up"
    return mail.Notice(event, direction, _ips(rec), transition_subject(rec, s), "\n".join(body))


# --- evidence before a takeover, conflicts while holding (docs/safety.md) -----------------------

Answering = tuple[tuple[str, tuple[str, ...]], ...]  # (address, MACs that answered for it)


def answering_text(answering: Answering) -> str:
    return " ".join(f"{a}={mac}" for a, macs in answering for mac in macs)


def answering_block(answering: Answering) -> str:
    return "\n".join(f"  {a:<24} answers from {' '.join(macs)}" for a, macs in answering)


def blocked_notice(
    answering: Answering, why: str, s: mail.Situation, reprobe: float, now: float
) -> mail.Notice:
    """Not taking over: the primary is silent but its address answers; probing again every
    ``reprobe`` seconds."""
    ips = tuple(a for a, _ in answering)
    subject = (
        f"[ipfailover] {s.node}: NOT taking over {' '.join(ips)} from {s.peer}: "
        "its address still answers"
    )
    body = (
        f"{s.peer} is silent (no verified heartbeat for the dead time), but its address "
        f"still answers on the link:\n\n{answering_block(answering)}\n\n"
        f"Nothing was taken over: {why}.\nfailoverd probes again every "
        f"{reprobe:g} s and takes over once no address "
        f"answers.\n\n{mail.situation_text(s, now)}\n"
    )
    return mail.Notice("blocked", "down", ips, subject, body)


CONFLICT_LISTED = 20
"""Addresses a conflict mail names one by one; more are counted."""


def conflict_notice(
    addresses: tuple[str, ...], mac: str, s: mail.Situation, defend_interval: float, now: float
) -> mail.Notice:
    """Another machine (``mac``) claims addresses we hold (one mail for all it claimed at once)."""
    first, more = addresses[0], len(addresses) - 1
    which = first if not more else f"{first} and {more} more"
    listed = ", ".join(addresses[:CONFLICT_LISTED])
    if len(addresses) > CONFLICT_LISTED:
        listed += f" and {len(addresses) - CONFLICT_LISTED} more"
    it, them = ("it", "it") if not more else ("them", "them")
    subject = f"[ipfailover] {s.node}: address conflict on {which}: also at {mac}"
    body = (
        f"While {s.node} holds {listed}, another machine claims {them}: {mac} answers or "
        f"announces {it} on the link.\nClients may split between the two until this is "
        f"resolved. {s.node} re-announces an address at most every {defend_interval:g} s "
        f"while {s.peer} is silent, so that they converge on it.\nFind the machine with that "
        f"MAC (switch tables, `ip neigh`) and stop it answering for {first} (is it "
        f"{s.peer}, hung but not dead?).\n\n{mail.situation_text(s, now)}\n"
    )
    return mail.Notice("conflict", "down", addresses, subject, body)
