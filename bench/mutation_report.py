"""The mutation score of the decision code, after `scripts/mutation` ran mutmut.

Usage: .venv/bin/python bench/mutation_report.py [--seconds N] [--previous DIR] [--names]

Reads mutmut's results in mutants/ and prints, for the files pyproject.toml's [tool.mutmut]
names (src/ipfailover/core/monitor.py and detector.py), how many mutants the tests killed, and
each surviving mutant (file, line, the function and the mutated line). A survivor is *explained*
when docs/development.md's table of equivalent mutants lists its function and mutated line; the
exit status is 1 if any survivor is not explained (a test is missing, or the table is out of
date), else 0.

The table is matched on the function and the mutated line's text, not on mutmut's mutant
numbers, so an edit elsewhere in a function does not unexplain its equivalent mutants.

``--previous DIR``: the results in DIR (a copy of mutants/src from an earlier run) count for every
mutant this run did not check, and are written back into mutants/; `scripts/mutation --again`
re-runs only the survivors, and a mutant once killed stays killed as long as the code and the
tests that killed it are unchanged.
``--names``: print the names of the surviving mutants only (for `mutmut run NAME...`).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code


def mutated_files() -> list[str]:
    """The files pyproject.toml's [tool.mutmut] only_mutate names (paths or globs)."""
    config = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["mutmut"]["only_mutate"]
    return sorted({str(p) for pattern in patterns for p in Path().glob(pattern)})


DOC = Path("docs/development.md")
DETECTED = ("killed", "timeout", "segfault")


@dataclass(frozen=True)
class Survivor:
    name: str  # mutmut's name, for `mutmut show`
    path: str
    line: int
    function: str  # Class.method or function
    original: str
    mutated: str
    status: str  # "survived" or "no tests"


def function_of(mutant: str) -> str:
    """mutmut's mangled name (``mod.xǁMonitorǁ_fire__mutmut_3``) as ``Monitor._fire``."""
    mangled = mutant.rpartition(".")[2].rpartition("__mutmut_")[0]
    if mangled.startswith("xǁ"):
        return ".".join(part for part in mangled[2:].split("ǁ") if part)
    return mangled.removeprefix("x_")


def first_lines(diff: str) -> tuple[str, str]:
    """The first removed and the first added line of a mutant's diff, stripped."""
    removed = [ln[1:].strip() for ln in diff.splitlines() if ln[:1] == "-" and ln[:3] != "---"]
    added = [ln[1:].strip() for ln in diff.splitlines() if ln[:1] == "+" and ln[:3] != "+++"]
    return (removed[0] if removed else "", added[0] if added else "")


def spans(path: str) -> dict[str, tuple[int, int]]:
    """Line span of every function in the original source, by Class.method name."""
    out: dict[str, tuple[int, int]] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                out[prefix + child.name] = (child.lineno, child.end_lineno or child.lineno)
                walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(Path(path).read_text(encoding="utf-8")), "")
    return out


def line_of(path: str, function: str, original: str, where: dict[str, tuple[int, int]]) -> int:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    start, end = where.get(function, (1, len(lines)))
    for number in range(start, end + 1):
        if original and lines[number - 1].strip() == original:
            return number
    return start


def explained() -> set[tuple[str, str]]:
    """(function, mutated line) of each row of docs/development.md's equivalent-mutant table."""
    rows = set()
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    for match in re.finditer(r"^\| `([\w.]+)` \| \d+ \| `(.*?)` \| `(.*?)` \|", text, re.MULTILINE):
        rows.add((match[1], match[3].replace("\\|", "|")))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, help="how long the run took (printed)")
    parser.add_argument("--previous", type=Path, help="results of an earlier full run")
    parser.add_argument("--names", action="store_true", help="print the survivors' names only")
    args = parser.parse_args(argv)
    counts: dict[str, int] = {}
    survivors: list[Survivor] = []
    for path in mutated_files():
        meta = Path("mutants") / f"{path}.meta"
        if not meta.exists():
            print(
                f"mutation_report: {meta} is missing; run scripts/mutation first", file=sys.stderr
            )
            return 2
        where = spans(path)
        data = json.loads(meta.read_text(encoding="utf-8"))
        results = data["exit_code_by_key"]
        if args.previous is not None:
            earlier = args.previous / Path(path).relative_to("src")
            before = json.loads(Path(f"{earlier}.meta").read_text(encoding="utf-8"))
            for name, code in before["exit_code_by_key"].items():
                if results.get(name) is None and name in results:
                    results[name] = code
            # mutants/ now holds every verdict, for `mutmut results` and the next --again
            meta.write_text(json.dumps(data, indent=4), encoding="utf-8")
        for name, code in sorted(results.items()):
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
            if status in ("survived", "no tests"):
                original, mutated = first_lines(get_diff_for_mutant(name, path=path))
                function = function_of(name)
                line = line_of(path, function, original, where)
                survivors.append(Survivor(name, path, line, function, original, mutated, status))
    if args.names:
        print("\n".join(s.name for s in survivors))
        return 0
    total = sum(n for status, n in counts.items() if status != "skipped")
    detected = sum(counts.get(status, 0) for status in DETECTED)
    known = explained()
    unexplained = [s for s in survivors if (s.function, s.mutated) not in known]
    print("mutants:", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    if args.seconds is not None:
        print(f"run time: {args.seconds} s")
    if total:
        print(f"score: {detected}/{total} detected = {100 * detected / total:.1f} %")
        equivalent = len(survivors) - len(unexplained)
        if equivalent:
            print(
                f"score without the {equivalent} equivalent mutants: "
                f"{detected}/{total - equivalent} = {100 * detected / (total - equivalent):.1f} %"
            )
    for s in survivors:
        mark = "equivalent" if s not in unexplained else s.status
        print(f"{s.path}:{s.line}: {s.function}: {mark}: {s.original}  ->  {s.mutated}  [{s.name}]")
    if unexplained:
        print(
            f"{len(unexplained)} surviving mutants are neither killed nor listed as equivalent "
            f"in {DOC}: add a test that kills each, or explain it there"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
