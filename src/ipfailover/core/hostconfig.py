"""The hostconfig lexer: ``FAILOVER_*`` assignments out of a shell-like file, with their lines.

The file is shell-like (``/etc/hostconfig`` on Mac OS X Server): ``NAME=value``,
``NAME="value"`` or ``NAME='value'``, an optional leading ``export``, ``#`` comments
and blank lines.  It is shared with other software, so only lines that assign a
``FAILOVER_*`` name are looked at; every other line is ignored, however malformed.

:func:`scan` knows the syntax and nothing of what the values mean: it returns the last
value written for each known name, with its line, and a located :class:`ConfigError` for
each line that is not one clean assignment the shell and we would read alike. Every pass
over a value is linear in its length (a 600 kB value must not take minutes).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ipfailover.core.errors import ConfigError

_EXPORT = re.compile(r"export[ \t]+")
_ASSIGNMENT = re.compile(r"(FAILOVER_[A-Za-z0-9_]*)=(.*)", re.DOTALL)
_EXPORT_ONLY = re.compile(r"(FAILOVER_[A-Za-z0-9_]*)[ \t\r]*(?:#.*)?", re.DOTALL)
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_]")
_OTHER_CASE = re.compile(r"(?i)failover_[A-Za-z0-9_]*=")  # failover_bcast_ips=...
_SHLEX_SPACE = " \t\r\n"
_OPERATORS = ";&|<>()$`"


@dataclass(frozen=True)
class Assignment:
    """The value last written to a name (unquoted, as the shell would assign it), and where."""

    line: int
    value: str


@dataclass
class Scan:
    """What :func:`scan` found: the assignments, the errors, and the probable mistakes that
    change nothing (warnings: a lower-case ``failover_`` name, a variable assigned twice)."""

    assignments: dict[str, Assignment] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)


def scan(text: str, path: str, known: Sequence[str]) -> Scan:
    """Collect the last assignment of each name in ``known``, and the line-level errors.

    A ``FAILOVER_*`` name not in ``known`` is an error (with a "did you mean" hint), so a
    typo never silently yields a default.
    """
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark (Windows editors) is no text
    found = Scan()
    for number, line in enumerate(text.split("\n"), start=1):
        body = line.lstrip(" \t")
        export = _EXPORT.match(body)
        if export:
            body = body[export.end() :]
        if not body.startswith("FAILOVER_"):
            if _OTHER_CASE.match(body):
                name = _NOT_NAME_CHAR.split(body, maxsplit=1)[0]
                upper = name.upper()
                hint = f"write {upper}" if upper in known else "names are upper case"
                message = (
                    f"ignored: shell names are case-sensitive and only FAILOVER_* is read; {hint}"
                )
                found.warnings.append(ConfigError(path, number, name, message))
            continue  # not ours: a shared file, ignore whatever it is
        name = _NOT_NAME_CHAR.split(body, maxsplit=1)[0]
        try:
            value = _line_value(name, body, exported=export is not None)
        except ValueError as exc:
            found.errors.append(ConfigError(path, number, name, str(exc)))
            continue
        if name not in known:
            found.errors.append(ConfigError(path, number, name, _unknown_message(name, known)))
        elif value is not None:
            if name in found.assignments:
                earlier = found.assignments[name].line
                message = f"assigned again; this value replaces the one on line {earlier}"
                found.warnings.append(ConfigError(path, number, name, message))
            found.assignments[name] = Assignment(number, value)
    return found


def _unknown_message(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name.upper(), known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown variable{hint}"


def _line_value(name: str, body: str, *, exported: bool) -> str | None:
    """The value of one FAILOVER_ line (starting at ``name``); None for a bare ``export NAME``.
    ValueError says what is wrong with the line."""
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("line is not valid UTF-8") from None
    assignment = _ASSIGNMENT.fullmatch(body)
    if assignment:
        return shell_word(assignment.group(2))
    if exported and _EXPORT_ONLY.fullmatch(body):
        return None  # `export NAME` changes no value
    raise ValueError(f"expected {name}=value, with no spaces around '='")


_EXPANSION = (
    "'$' and '`' are not allowed: the shell would expand them and we do not; "
    "write the value itself, not a variable or a command"
)


def shell_word(raw: str) -> str:
    """The value of the text after '=' as the shell would assign it, or ValueError."""
    hash_glued, operator = _unquoted_hazards(raw)
    if hash_glued:
        raise ValueError(
            "'#' inside an unquoted value; the shell keeps it but this parser would start a "
            "comment there, so quote the value"
        )
    if operator in ("$", "`"):
        raise ValueError(_EXPANSION)
    if operator:
        raise ValueError(
            f"unquoted {operator!r}: the shell ends the assignment there; write one assignment "
            "per line, with no commands after it (quote a value that contains it)"
        )
    try:
        words = split_words(raw)
    except ValueError:
        raise ValueError(
            "unterminated quote or trailing backslash; the value must be on one line"
        ) from None
    if not words:
        return ""
    if any("$" in word or "`" in word for word in words):
        raise ValueError(_EXPANSION)
    if raw[:1] in (" ", "\t"):
        raise ValueError("space after '='; write NAME=value or NAME=\"value\"")
    if len(words) > 1:
        raise ValueError('unquoted space in the value; quote the whole value: NAME="a b"')
    return words[0]


def _unquoted_hazards(raw: str) -> tuple[bool, str | None]:
    """Where the shell and :func:`split_words` would read ``raw`` differently, in one pass.

    First: whether the first unquoted '#' directly follows an unquoted word character
    (``a#b``).  There the shell keeps the '#' in the value while shlex starts a comment; we
    refuse rather than silently disagree.  After whitespace or a closing quote a '#' starts a
    comment for both.

    Second: the first shell operator character (``;``, ``&``, ``|``, ``<``, ``>``, ``(``,
    ``)``) outside quotes, or expansion character (``$``, backtick) outside single quotes,
    before any comment (a '#' after whitespace); or None.

    Both follow the same quoting: '...' is literal, "..." and bare text let a backslash
    escape the next character.
    """
    quote = ""
    previous = " "  # the character before, for the operator's comment rule
    after_word = False  # the character before ends an unquoted word, for the '#' rule
    hash_glued: bool | None = None  # None: no unquoted '#' yet
    operator: str | None = None
    operator_done = False  # an operator, or the comment that ends the search, was found
    i, n = 0, len(raw)
    while i < n and (hash_glued is None or not operator_done):
        char = raw[i]
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                i += 1
            elif char in "$`" and quote == '"' and not operator_done:
                operator, operator_done = char, True
            after_word = False
        elif char in "\"'":
            quote = char
        elif char == "#":
            if hash_glued is None:
                hash_glued = after_word
            if previous in _SHLEX_SPACE:
                operator_done = True
        elif char == "\\":
            i += 1
            after_word = True
        else:
            after_word = char not in _SHLEX_SPACE
            if char in _OPERATORS and not operator_done:
                operator, operator_done = char, True
        previous = char
        i += 1
    return bool(hash_glued), operator


def split_words(raw: str) -> list[str]:
    """``shlex.split(raw, comments=True)`` in linear time (shlex builds each token by string
    concatenation, which took minutes on a 600 kB value): words split on unquoted whitespace,
    '...' literal, "..." with backslash escaping only '"' and '\\', an unquoted backslash
    escaping the next character, and an unquoted '#' starting a comment. ValueError on an
    unterminated quote or a trailing backslash."""
    words: list[str] = []
    word: list[str] = []
    in_word = False  # a word has started (perhaps an empty quoted one)
    i, n = 0, len(raw)
    while i < n:
        char = raw[i]
        if char in _SHLEX_SPACE:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            i += 1
        elif char == "#":
            break
        elif char == "'":
            end = raw.find("'", i + 1)
            if end < 0:
                raise ValueError("no closing quotation")
            word.append(raw[i + 1 : end])
            in_word, i = True, end + 1
        elif char == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError("no closing quotation")
                char = raw[i]
                if char == '"':
                    break
                if char == "\\" and i + 1 < n and raw[i + 1] in '"\\':
                    word.append(raw[i + 1])
                    i += 2
                else:
                    word.append(char)
                    i += 1
            in_word, i = True, i + 1
        elif char == "\\":
            if i + 1 >= n:
                raise ValueError("no escaped character")
            word.append(raw[i + 1])
            in_word, i = True, i + 2
        else:
            word.append(char)
            in_word, i = True, i + 1
    if in_word:
        words.append("".join(word))
    return words
