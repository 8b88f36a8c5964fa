"""Whether a program may be trusted to run as root, in the manner of sshd's StrictModes.

A transition script, or a folder on the way to it, that someone other than root (or the
daemon's user) could change is refused: :func:`chain_problem` walks the path one component
at a time, as the kernel would, symbolic links included. :func:`open_checked` then opens the
very file that was checked, and :func:`pinned` gives a path that runs that open file and
nothing else, so a rename or a swap after the check cannot change what runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def unsafe(st: os.stat_result, uid: int, *, allow_sticky: bool = False) -> str | None:
    """Why a file or directory with this stat is unsafe to trust, or None.

    It must be owned by root or by ``uid`` (the daemon's user) and not writable by group or
    others. ``allow_sticky`` accepts a group/other-writable directory with the sticky bit (``/tmp``)
    owned by root or ``uid``: there nobody else can rename or remove the entries we own.
    """
    if st.st_uid not in (0, uid):
        return f"owned by uid {st.st_uid}, not root"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky_dir = allow_sticky and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if writable and not sticky_dir:
        who = _WRITERS[writable]
        return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


_WRITERS = {
    stat.S_IWGRP: "group",
    stat.S_IWOTH: "others",
    stat.S_IWGRP | stat.S_IWOTH: "group and others",
}


def folder_problem(folder: Path, uid: int) -> str | None:
    """Why the script folder is unsafe: the folder itself, or any directory above it."""
    try:
        problem = unsafe(folder.stat(), uid)
    except OSError as e:
        return f"cannot check {folder}: {e.strerror}"
    if problem:
        return f"folder {folder} is {problem}"
    for parent in folder.resolve().parents:
        try:
            problem = unsafe(parent.stat(), uid, allow_sticky=True)
        except OSError as e:
            return f"cannot check {parent}: {e.strerror}"
        if problem:
            return f"directory {parent} (above the script folder) is {problem}"
    return None


MAX_LINKS = 40  # symbolic links followed in one path, as the kernel's own limit


class Refused(Exception):
    """A program that must not run: unsafe, or not the file that was checked."""


def fix_hint(path: Path | str) -> str:
    return f"(fix: chown root {path} && chmod go-w {path})"


def chain_problem(path: Path | str, uid: int) -> tuple[str | None, os.stat_result | None]:
    """Why the program at ``path`` cannot be trusted, and the stat of the file it ends at.

    The path is resolved one component at a time, as the kernel would: every directory on the
    way, including those reached through a symbolic link, must pass :func:`unsafe` (with the
    sticky-bit exception of ``/tmp``), every symbolic link followed must be owned by root (or
    ``uid``), and the file it ends at must pass :func:`unsafe`. So a link to a file, or into a
    directory, that someone else could change is refused, whoever owns the link.
    """
    path = Path(path)
    pending = list(path.parts[1:]) if path.is_absolute() else list(path.absolute().parts[1:])
    current = Path("/")
    try:
        st = os.lstat(current)
    except OSError as e:
        return f"cannot check /: {e.strerror}", None
    if problem := unsafe(st, uid, allow_sticky=True):
        return f"directory / (above {path}) is {problem}", None
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        step = current / name
        try:
            st = os.lstat(step)
        except OSError as e:
            return f"cannot check {step}: {e.strerror}", None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return f"{path}: too many symbolic links", None
            if st.st_uid not in (0, uid):
                return f"symbolic link {step} is owned by uid {st.st_uid}, not root", None
            target = os.readlink(step)
            if target.startswith("/"):
                current = Path("/")
            pending = [*Path(target).parts[1 if target.startswith("/") else 0 :], *pending]
            continue
        current = step
        if pending:
            if not stat.S_ISDIR(st.st_mode):
                return f"{step} (on the way to {path}) is not a directory", None
            if problem := unsafe(st, uid, allow_sticky=True):
                return f"directory {step} (above {path}) is {problem} {fix_hint(step)}", None
        elif problem := unsafe(st, uid):
            via = "" if step == path else f" (the target of {path})"
            return f"{step}{via} is {problem} {fix_hint(step)}", st
    return None, st


def identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def open_checked(
    path: Path | str, *, uid: int, strict: bool, expect: tuple[int, int] | None = None
) -> int:
    """Open the program at ``path`` for running (an O_PATH fd) and check it is what was checked.

    ``strict``: unless ``expect`` (the identity found when it was checked) is given, the whole
    chain is checked now (:func:`chain_problem`); the file opened must be that very file, and
    still safe. Raises :class:`Refused`, or OSError if it cannot be opened. The caller closes
    the fd, and runs the program through it (:func:`fd_path`), so a rename or swap after the
    check cannot change what runs.
    """
    if strict and expect is None:
        problem, st = chain_problem(path, uid)
        if problem is not None or st is None:
            raise Refused(problem or f"cannot check {path}")
        expect = identity(st)
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path} is not a regular file")
        if expect is not None and identity(st) != expect:
            raise Refused(f"{path} was replaced between the check and the run")
        if strict and (problem := unsafe(st, uid)):
            raise Refused(f"{path} is {problem} {fix_hint(path)}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def fd_path(fd: int) -> str:
    """The path that runs the open file ``fd`` in a child that inherits it (same number)."""
    return f"/proc/self/fd/{fd}"


@contextlib.contextmanager
def pinned(fd: int, name: str) -> Iterator[str]:
    """A path ending in ``name`` that runs the open file ``fd`` and nothing else.

    A symbolic link ``<private dir>/<name>`` to ``/proc/self/fd/<fd>``, in a fresh 0700
    directory of the temporary folder. Executing it runs the very file opened (and checked),
    whatever is renamed meanwhile; and since a ``#!`` script's interpreter is handed this path,
    its ``$0`` keeps the script's own name (``basename "$0"``), in another folder.
    """
    parent = tempfile.gettempdir()
    try:
        unsafe_parent = unsafe(os.stat(parent), os.geteuid(), allow_sticky=True)
    except OSError:
        unsafe_parent = "unusable"
    if unsafe_parent:  # nowhere private to put the link: run it under its fd's name
        yield fd_path(fd)
        return
    folder = tempfile.mkdtemp(prefix="ipfailover-run-", dir=parent)
    try:
        link = os.path.join(folder, name)
        os.symlink(fd_path(fd), link)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)
