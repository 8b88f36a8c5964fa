"""The man pages in docs/man are exactly what the programs' argparse parsers give."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ipfailover.docgen import manpage

MAN = Path(__file__).resolve().parents[2] / "docs" / "man"
REGENERATE = "run scripts/gen-man and commit docs/man"


def test_committed_pages_match_the_parsers() -> None:
    expected = manpage.pages()
    committed = {p.name: p.read_text(encoding="utf-8") for p in MAN.glob(f"*.{manpage.SECTION}.md")}
    assert sorted(committed) == sorted(expected), f"docs/man has the wrong files: {REGENERATE}"
    for name, text in expected.items():
        assert committed[name] == text, f"docs/man/{name} is out of date: {REGENERATE}"


def test_output_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    narrow = manpage.pages()
    monkeypatch.setenv("COLUMNS", "300")
    assert manpage.pages() == narrow


def options_of(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings]


def test_every_option_and_subcommand_is_documented() -> None:
    pages = manpage.pages()
    for name, parser in manpage.parsers().items():
        page = pages[f"{name}.{manpage.SECTION}.md"]
        for option in options_of(parser):
            assert option in page, f"{option} missing from {name}'s page"
    ipfailover = pages["ipfailover.8.md"]
    for command in ("keygen", "lab"):
        assert f"## ipfailover {command}\n" in ipfailover
        assert f"| `{command}` |" in ipfailover


def test_render_expands_defaults_escapes_markdown_and_recurses() -> None:
    top = argparse.ArgumentParser(prog="tool", description="Does <things> with *stars*.")
    top.add_argument("--port", type=int, default=1694, help="UDP port (default: %(default)s)")
    top.add_argument("--secret", help=argparse.SUPPRESS)
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    outer = commands.add_parser("outer", help="the outer command")
    inner = outer.add_subparsers(dest="sub").add_parser("inner", help="the inner one")
    inner.add_argument("role", choices=["heartbeatd", "failoverd"], help="which daemon")
    page = manpage.render(top, ["other"])
    assert "Does \\<things\\> with \\*stars\\*." in page
    assert "- `--port PORT`: UDP port (default: 1694)" in page
    assert "--secret" not in page
    assert "| `outer` | the outer command |" in page
    assert "## tool outer inner\n\nthe inner one\n" in page
    assert "- `{heartbeatd,failoverd}`: which daemon" in page
    assert "[other(8)](other.8.md)" in page


def test_write_pages_removes_pages_of_programs_that_are_gone(tmp_path: Path) -> None:
    (tmp_path / "NotifyFailover.8.md").write_text("old\n")
    (tmp_path / "README.md").write_text("kept\n")
    written = manpage.write_pages(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([p.name for p in written] + ["README.md"])
    assert (tmp_path / "heartbeatd.8.md").read_text() == manpage.pages()["heartbeatd.8.md"]


def every_parser() -> list[argparse.ArgumentParser]:
    out = []
    for parser in manpage.parsers().values():
        out.append(parser)
        out += [sub for _, sub, _ in manpage._subcommands(parser)]
    return out


def test_every_help_lists_the_exit_status() -> None:
    for parser in every_parser():
        assert "exit status:" in parser.format_help(), f"{parser.prog} --help has no exit status"
        assert "``" not in parser.format_help(), f"{parser.prog} --help shows RST quotes"


def test_roff_pages_render_without_warnings(tmp_path: Path) -> None:
    """The installed pages (`man heartbeatd`): man(1) renders them cleanly, every option in."""
    import os
    import subprocess

    written = manpage.write_roff(tmp_path, "2026-01-01")
    assert sorted(p.name for p in written) == ["failoverd.8", "heartbeatd.8", "ipfailover.8"]
    env = {**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"}
    for path in written:
        res = subprocess.run(
            ["man", "--warnings", "-l", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert res.returncode == 0 and res.stderr == "", res.stderr
        text = res.stdout.replace("\u2010", "-").replace("\u2212", "-")
        parser = manpage.parsers()[path.name.removesuffix(".8")]
        for sub in [parser, *(s for _, s, _ in manpage._subcommands(parser))]:
            for option in options_of(sub):
                assert option in text, f"{option} missing from {path.name}"
        assert "exit status:" in text
