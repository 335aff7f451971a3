"""Mutation-testing score per module, from the results of `mutmut run` (`make mutants`).

mutmut writes one verdict per mutant into ``mutants/<module>.py.meta``. This script counts them
per module, subtracts the mutants classified as equivalent in ``benchmarks/mutants_equivalent.toml``
(no observable change; each with its mutated line and a one-line reason) and prints the table,
the surviving mutants and any stale classification. With ``--write`` it puts the table into
docs/benchmarks.md ("Mutation testing").

Verdicts: *killed* counts mutants a test failed on, including timeouts (a mutant that makes a
test hang is detected); *survived* counts every other mutant not classified as equivalent (all
tests passed, or no selected test calls the function); score = killed / (mutants − equivalent).

    python -m benchmarks.mutants [--write]      # after `mutmut run`, from the repository root
"""

from __future__ import annotations

import argparse
import json
import sys

import tomllib

from benchmarks.common import ROOT, write_section

EQUIVALENT = ROOT / "benchmarks" / "mutants_equivalent.toml"
COMMAND = "make mutants"
TIMEOUT = {36, 24, -24, 152, 255}  # mutmut's timeout exit codes (SIGXCPU and its wall clock)
KILLED = {1, 3} | TIMEOUT  # a test failed, pytest failed internally, or the tests timed out
NOT_CHECKED = {None, 2}  # never run, or interrupted


def config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def mutated_line(name: str, path: str) -> str:
    """The line mutant ``name`` changes, as it reads after the mutation (first '+' line of
    mutmut's diff, stripped; '' when the mutation deletes a line)."""
    from mutmut.__main__ import get_diff_for_mutant  # needs the cwd to be the repository root

    diff = get_diff_for_mutant(name, path=path)
    added = [line[1:].strip() for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else ""


def collect(paths: list[str], equivalent: dict) -> tuple[list[dict], list[str]]:
    rows, problems = [], []
    for path in paths:
        meta = ROOT / "mutants" / (path + ".meta")
        if not meta.exists():
            problems.append(f"{path}: no results ({meta.relative_to(ROOT)} missing)")
            continue
        verdicts = json.loads(meta.read_text())["exit_code_by_key"]
        killed, equiv, survivors, unchecked, timeouts = 0, 0, [], 0, 0
        for name, code in sorted(verdicts.items()):
            if code in KILLED:
                killed += 1
                timeouts += code in TIMEOUT
                if name in equivalent:
                    problems.append(f"{name} is classified equivalent but was killed: "
                                    "remove it from mutants_equivalent.toml")
            elif code in NOT_CHECKED:
                unchecked += 1
            elif name in equivalent:
                line = mutated_line(name, path)
                if line != equivalent[name]["line"]:
                    problems.append(f"{name}: stale classification, the mutant now reads "
                                    f"{line!r}, not {equivalent[name]['line']!r}")
                    survivors.append(name)
                else:
                    equiv += 1
            else:
                survivors.append(name)
        if unchecked:
            problems.append(f"{path}: {unchecked} mutants not checked (incomplete run)")
        n = len(verdicts)
        rows.append({"module": path, "mutants": n, "killed": killed, "equivalent": equiv,
                     "survived": len(survivors), "unchecked": unchecked, "timeouts": timeouts,
                     "score": killed / (n - equiv) if n > equiv else float("nan"),
                     "survivors": survivors})
    return rows, problems


def table(rows: list[dict]) -> str:
    lines = ["| module | mutants | killed | equivalent | survived | score |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['equivalent']} "
                     f"| {r['survived']} | {100 * r['score']:.1f} % |")
    tot = {k: sum(r[k] for r in rows) for k in ("mutants", "killed", "equivalent", "survived")}
    score = tot["killed"] / (tot["mutants"] - tot["equivalent"])
    lines.append(f"| **all** | {tot['mutants']} | {tot['killed']} | {tot['equivalent']} "
                 f"| {tot['survived']} | {100 * score:.1f} % |")
    timeouts = sum(r["timeouts"] for r in rows)
    lines.append(f"\nKilled includes {timeouts} mutants stopped by the timeout.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    equivalent = tomllib.loads(EQUIVALENT.read_text())
    rows, problems = collect(config()["only_mutate"], equivalent)
    print(table(rows))
    for r in rows:
        for name in r["survivors"]:
            print(f"survived: {name}   (mutmut show {name})")
    for p in problems:
        print(f"WARNING: {p}", file=sys.stderr)
    if args.write:
        if problems:
            print("not writing docs/benchmarks.md: fix the warnings first", file=sys.stderr)
            return 1
        survivors = [f"`{name}`" for r in rows for name in r["survivors"]]
        text = f"`{COMMAND}`\n\n{table(rows)}"
        if survivors:
            text += "\n\nSurviving (`mutmut show NAME`): " + ", ".join(survivors) + "."
        write_section("benchmarks.md", "mutants", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
