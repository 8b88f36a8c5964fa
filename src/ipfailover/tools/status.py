"""``ipfailover status``: ask the running daemons over their control sockets and show the answer."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import cast

from ipfailover.core import config
from ipfailover.shell import control
from ipfailover.shell.snapshot import (
    Answering,
    FailoverdSnapshot,
    HeartbeatdSnapshot,
    Snapshot,
)

EXIT_CONFIG = 2  # --config names a file with errors: which run dir to ask is unknown
EXIT_NOT_RUNNING = 3  # as systemctl status says for a unit that is not running
EXIT_PRIVILEGE = 4  # the LSB's "user had insufficient privilege"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the documented JSON (docs/status.md)")
    config.add_path_argument(p, help="read FAILOVER_RUN_DIR from this file (default: %(default)s)")
    p.add_argument("--run-dir", metavar="DIR", help="where the control sockets are (overrides)")


def collect(run_dir: str) -> list[Snapshot]:
    """The status of every daemon that answers in ``run_dir``; PermissionError if the sockets
    are there but not ours to open (they are root-only)."""
    out: list[Snapshot] = []
    for role in control.ROLES:
        path = control.socket_path(run_dir, role)
        try:
            out.append(cast(Snapshot, control.query(path)))  # as docs/status.md says
        except PermissionError:
            raise
        except (OSError, ValueError):
            continue
    return out


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir
    if run_dir is None:
        if args.config == config.DEFAULT_PATH and not os.path.lexists(args.config):
            run_dir = config.Config(path=args.config).run_dir  # no /etc/hostconfig: the default
        else:
            try:
                run_dir = config.load_config(args.config).run_dir
            except config.ConfigErrors as errs:
                print(
                    f"ipfailover status: {errs.errors[0]}\n"
                    f"ipfailover status: cannot tell FAILOVER_RUN_DIR from {args.config}; fix it "
                    f"(ipfailover check --config {args.config}) or pass --run-dir DIR",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
    try:
        daemons = collect(run_dir)
    except PermissionError as e:
        print(f"ipfailover status: {e.filename or run_dir}: permission denied (run as root)")
        return EXIT_PRIVILEGE
    if args.json:
        print(json.dumps({"schema": control.SCHEMA, "daemons": daemons}, indent=2, sort_keys=True))
    elif daemons:
        print("\n\n".join(render(d) for d in daemons))
    else:
        print(f"no ipfailover daemon is running (no control socket answers in {run_dir})")
    return 0 if daemons else EXIT_NOT_RUNNING


# Human output ----------------------------------------------------------------------------------


def _clock(wall: float | None) -> str:
    if wall is None:
        return "never"
    ago = time.time() - wall
    when = f"{ago:.1f} s ago" if ago >= 0 else f"in {-ago:.1f} s"
    return f"{time.strftime('%H:%M:%S', time.localtime(wall))} ({when})"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def _rejected(d: Snapshot) -> str:
    counts = d.get("rejected", {})
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def render(d: Snapshot) -> str:
    text = (
        _render_heartbeatd(cast(HeartbeatdSnapshot, d))
        if d.get("role") == "heartbeatd"
        else _render_failoverd(cast(FailoverdSnapshot, d))
    )
    collision = _collision(d)
    if collision:
        head, _, rest = text.partition("\n")
        text = "\n".join([head, collision, rest]) if rest else f"{head}\n{collision}"
    return text


def _collision(d: Snapshot) -> str:
    """The node-name collision line, right under the heading: it is the loudest thing."""
    c = d.get("name_collision")
    if not c:
        return ""
    where = c["source"] + (f" on {c['network']}" if c.get("network") else "")
    if c["active"]:
        return (
            f"  NODE NAME COLLISION: another machine sends as {c['name']!r} from {where} "
            f"(boot {c['boot']}), {c['datagrams']} datagrams since {_clock(c['first'])}, last "
            f"{_clock(c['last'])}; give each machine its own FAILOVER_NODE_NAME"
        )
    return (
        f"  past node name collision: {c['name']!r} from {where}, last {_clock(c['last'])} "
        f"({c['episodes']} episode(s))"
    )


def _render_failoverd(d: FailoverdSnapshot) -> str:
    peer = d["peer"]
    lines = [
        f"failoverd on {d['node']} (pid {d['pid']}): {d['state'].upper()} since "
        f"{_clock(d['since'])}",
        f"  peer: {peer['name'] or '(not yet identified)'} ({peer['ip']}), interval "
        f"{_num(peer['interval'])}, dead time {_num(d['deadtime'])}, failback delay "
        f"{_num(d['failback_delay'])}",
    ]
    if d.get("holddown_until"):
        lines.append(f"  hands back at {_clock(d['holddown_until'])} if the peer stays up")
    blocked = d.get("blocked")
    if blocked:
        lines.append(f"  NOT TAKING OVER: {blocked['why']}")
        lines += [
            f"    {x['address']} answers from {' '.join(x['macs'])}" for x in blocked["answering"]
        ]
    elif (d.get("probe") or {}).get("answering") and d.get("holding"):
        lines.append("  taken over while still answering from: " + _macs(d["probe"]["answering"]))
    for c in d.get("conflicts") or []:
        lines.append(
            f"  ADDRESS CONFLICT: {c['address']} also claimed by {' '.join(c['macs'])} since "
            f"{_clock(c['since'])}, last {_clock(c['last_seen'])}; defended {c['defences']} times"
        )
    rows = [["network", "alive", "last heartbeat", "loss 1m", "heartbeats"]]
    for n in d["networks"]:
        loss = "-" if n["loss_1m"] is None else f"{100 * n['loss_1m']:.1f}%"
        alive = "yes" if n["alive"] else ("ANOMALY" if n["anomaly"] else "no")
        rows.append([n["name"], alive, _clock(n["last_heard"]), loss, str(n["heartbeats"])])
    lines += _table(rows)
    rows = [["address", "held here"]]
    rows += [[a["address"], "yes" if a["held"] else "no"] for a in d["addresses"]]
    lines += _table(rows)
    if d["transitions"]:
        lines.append("  last transitions:")
        rows = []
        for t in d["transitions"]:
            steps = ", ".join(f"{s['step']} {s['duration']:.3f}" for s in t["steps"])
            result = "ok" if t["ok"] else "FAILED" if not t.get("vetoed") else "VETOED"
            total = "-" if t["duration"] is None else f"{t['duration']:.3f} s"
            rows.append([_clock(t["started"]), t["action"], t["reason"], result, total, steps])
        lines += _table(rows, "    ")
    lines.append(f"  mail pending: {d['mail']['pending']}")
    lines.append(f"  rejected datagrams: {_rejected(d)}")
    return "\n".join(lines)


def _render_heartbeatd(d: HeartbeatdSnapshot) -> str:
    lines = [
        f"heartbeatd on {d['node']} (pid {d['pid']}): sending every {_num(d['interval'])} to "
        + " ".join(d["targets"]),
        f"  sent: {d['sent']} datagrams, send errors: {d['send_errors']}",
    ]
    if d["listeners"]:
        rows = [["listener", "holds our addresses", "last challenge"]]
        rows += [
            [x["name"], "yes" if x["holding"] else "no", _clock(x["last_challenge"])]
            for x in d["listeners"]
        ]
        lines += _table(rows)
    else:
        lines.append("  listeners: none (no failoverd has challenged us)")
    lines.append(f"  rejected datagrams: {_rejected(d)}")
    return "\n".join(lines)


def _macs(answering: list[Answering]) -> str:
    return "; ".join(f"{x['address']} {' '.join(x['macs'])}" for x in answering)


def _num(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:g} s"
