"""The lab's processes: a program in a namespace, its log read live, and a probe client's answers.

A :class:`LabProcess` is a ``subprocess.Popen`` whose output is teed to a log file, every line
stamped with ``time.monotonic()`` and parsed for ``key=value`` fields, so tests and the scenario
can wait for daemon events on the same time axis as the probes. A :class:`ProbeMonitor` reads a
probe client's JSON lines live and answers timing questions about them.
:class:`ipfailover.lab.testbed.Lab` starts both.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ipfailover.lab.probe import Probe
from ipfailover.lab.topology import NODE_NAMES, LabTimeout, Node, sh


def daemon_command(name: str) -> list[str]:
    """How to start one of the product's programs (heartbeatd, failoverd, ipfailover).

    The console script next to this interpreter if installed, else ``python -m``.
    """
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = "cli" if name == "ipfailover" else name
    return [sys.executable, "-m", f"ipfailover.{module}"]


def write_key(path: Path) -> Path:
    """Write a fresh shared key with the product's own ``ipfailover keygen PATH``.

    That writes 64 hex digits and a newline, mode 0600; using the real command
    keeps the lab honest about the key format the daemons accept.
    """
    sh([*daemon_command("ipfailover"), "keygen", "--force", str(path)])
    return path


_FIELD = re.compile(r'([A-Za-z_][\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of one daemon log line (double-quoted values unquoted)."""
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(line):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields[key] = value
    return fields


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a lab process wrote, stamped with time.monotonic() when read."""

    t: float
    text: str
    fields: dict[str, str]

    @property
    def event(self) -> str | None:
        return self.fields.get("event")


class LabProcess(subprocess.Popen[bytes]):
    """A process started in a lab namespace, its output teed to a log file.

    Every line is stamped with time.monotonic() as it arrives and parsed for
    ``key=value`` fields, so tests and the runner can wait for daemon events and
    place them on the same time axis as the probes.  With ``capture_stdout`` the
    stdout pipe is left to the caller (the probe client's JSON) and only stderr
    is teed; otherwise stderr and stdout go to the log together.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        node: Node,
        name: str,
        log_path: Path,
        capture_stdout: bool = False,
        stdin_pipe: bool = False,
    ) -> None:
        self.node = node
        self.name = name
        self.log_path = log_path
        self.lines: list[LogLine] = []
        self._cond = threading.Condition()
        self._eof = False
        self.closed_at: float | None = None
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        super().__init__(
            list(argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stdout else subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches only the runner
            env=env,
        )
        stream = self.stderr if capture_stdout else self.stdout
        assert stream is not None
        self._tee = threading.Thread(target=self._tee_lines, args=(stream,), daemon=True)
        self._tee.start()

    def _tee_lines(self, stream: IO[bytes]) -> None:
        with open(self.log_path, "ab") as log:
            for raw in iter(stream.readline, b""):
                now = time.monotonic()
                log.write(raw)
                log.flush()
                text = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    self.lines.append(LogLine(now, text, parse_fields(text)))
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self.closed_at = time.monotonic()  # about when it exited (or closed its output)
            self._cond.notify_all()

    @property
    def label(self) -> str:
        return f"{NODE_NAMES[self.node]}/{self.name}"

    def events(self, event: str | None = None, since: float = 0.0) -> list[LogLine]:
        """Lines with an ``event`` field (of that name, if given) read at or after since."""
        with self._cond:
            return [
                ln
                for ln in self.lines
                if ln.t >= since and ln.event is not None and event in (None, ln.event)
            ]

    def find_event(self, event: str, since: float = 0.0, **fields: str) -> LogLine | None:
        """The first ``event=<event>`` line since ``since`` whose fields include ``fields``."""
        for line in self.events(event, since):
            if all(line.fields.get(k) == v for k, v in fields.items()):
                return line
        return None

    def wait_event(self, event: str, timeout: float, since: float = 0.0, **fields: str) -> LogLine:
        """Wait up to timeout seconds for a matching event line; raise LabTimeout if none.

        Gives up at once if the process has closed its output (it exited).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.find_event(event, since, **fields)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        want = " ".join([f"event={event}", *(f"{k}={v}" for k, v in fields.items())])
        why = f"exited with {self.poll()}" if self._eof else f"not within {timeout:.1f}s"
        raise LabTimeout(f"{self.label}: no '{want}' ({why}); last lines:\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        """The last n lines of output, for error messages."""
        with self._cond:
            return "\n".join(f"    {ln.text}" for ln in self.lines[-n:])

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM, then after grace seconds SIGKILL its process group; return the exit code.

        The group was created by us at spawn time (start_new_session), so killing
        it only reaches this process and the children it started.
        """
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.send_signal(signal.SIGTERM)
            try:
                self.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.wait(5.0)
        self._tee.join(1.0)
        if self._tee.is_alive():  # a leftover child of ours still holds the pipe
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self._tee.join(2.0)
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        return self.returncode


class ProbeMonitor:
    """Reads a probe client's JSON lines live and answers timing questions about them."""

    def __init__(self, process: LabProcess, reply_timeout: float) -> None:
        self.process = process
        self.reply_timeout = reply_timeout
        self.probes: list[Probe] = []
        self.bad_lines = 0
        self._cond = threading.Condition()
        assert process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            try:
                probe = Probe.from_json(raw.decode("utf-8", "replace"))
            except ValueError:
                self.bad_lines += 1
                continue
            with self._cond:
                self.probes.append(probe)
                self._cond.notify_all()

    def between(self, start: float, end: float = float("inf")) -> list[Probe]:
        """Probes sent in [start, end], ordered by send time."""
        with self._cond:
            return sorted((p for p in self.probes if start <= p.sent <= end), key=lambda p: p.sent)

    def first(self, who: str, after: float) -> Probe | None:
        """The earliest-sent probe since ``after`` that ``who`` answered."""
        return next((p for p in self.between(after) if p.who == who), None)

    def lost(self, start: float, end: float) -> int:
        """How many probes sent in [start, end] got no reply."""
        return sum(1 for p in self.between(start, end) if p.who is None)

    def who_answers(self, start: float, end: float = float("inf")) -> Counter[str | None]:
        """Who answered the probes sent in [start, end] (None = lost)."""
        return Counter(p.who for p in self.between(start, end))

    def wait_first(self, who: str, after: float, timeout: float) -> Probe | None:
        """Wait up to timeout for a probe sent since ``after`` answered by ``who``.

        Outcomes arrive out of send order (a loss is known only after the reply
        timeout), so once one is seen, wait a reply timeout longer for earlier
        probes to resolve before naming the first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.first(who, after) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.1))
        time.sleep(self.reply_timeout + 0.05)
        return self.first(who, after)

    def settle_candidate(self, who: str, after: float) -> Probe | None:
        """The first probe answered by ``who`` after the last one another node answered."""
        probes = self.between(after)
        last_other = max((i for i, p in enumerate(probes) if p.who not in (None, who)), default=-1)
        return next((p for p in probes[last_other + 1 :] if p.who == who), None)

    def wait_settled(self, who: str, after: float, timeout: float, quiet: float) -> Probe | None:
        """Wait until ``who`` alone has answered for ``quiet`` seconds; return its first answer.

        The result is the first probe answered by ``who`` after which no other
        node answered, confirmed over a quiet window of resolved probes.  None if
        that does not happen within timeout seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            candidate = self.settle_candidate(who, after)
            resolved_until = now - self.reply_timeout - 0.05
            if candidate is not None and resolved_until - candidate.sent >= quiet:
                return candidate
            if now >= deadline:
                return None
            time.sleep(min(0.05, deadline - now))
