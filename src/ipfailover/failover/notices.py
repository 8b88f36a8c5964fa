"""The mail text of failoverd: one transition's outcome, timeline and scripts."""

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
