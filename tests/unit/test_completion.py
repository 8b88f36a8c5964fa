"""bash and zsh completion, generated from the parsers (issue 11)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ipfailover.docgen import completion


def complete_bash(tmp_path: Path, line: str) -> list[str]:
    """What bash offers after ``line`` (the last word is the one being completed)."""
    script = tmp_path / "ipfailover.bash"
    script.write_text(completion.bash())
    words = line.split(" ")
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_ipfailover_complete\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    res = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_bash_completes_commands_options_and_choices(tmp_path: Path) -> None:
    assert complete_bash(tmp_path, "ipfailover ch") == ["check"]
    assert "--version" in complete_bash(tmp_path, "heartbeatd --")
    assert complete_bash(tmp_path, "ipfailover check --j") == ["--json"]
    assert complete_bash(tmp_path, "ipfailover check --role f") == ["failoverd"]
    assert complete_bash(tmp_path, "ipfailover condition h") == ["heartbeatd"]
    assert complete_bash(tmp_path, "ipfailover lab --interval ") == []
    (tmp_path / "hostconfig").write_text("")
    assert complete_bash(tmp_path, f"failoverd --config {tmp_path}/hostc") == [
        f"{tmp_path}/hostconfig"
    ]


def test_zsh_script_parses_and_names_every_command(tmp_path: Path) -> None:
    script = tmp_path / "_ipfailover"
    script.write_text(completion.zsh())
    res = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    text = script.read_text()
    assert text.startswith("#compdef heartbeatd failoverd ipfailover\n")
    for command in ("keygen", "lab", "status", "check", "install-units"):
        assert f"      {command})\n" in text
    assert "'*--role[check for this daemon]:ROLE:(heartbeatd failoverd)'" in text
