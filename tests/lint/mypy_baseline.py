"""mypy against a baseline that may only shrink: `python tests/lint/mypy_baseline.py [--update]`.

The baseline (tests/lint/mypy-baseline.json) holds the number of mypy errors per module when type checking
started. A module's budget covers the module and, once it is split into a package, its submodules. The
check fails when a module (with its submodules) has more errors than its budget, or a module without a
budget has any. When a budget is not used up, the check says so: `--update` then lowers the baseline to the
counts of today (it never raises one), and the smaller baseline is committed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE = Path(__file__).with_name("mypy-baseline.json")
PACKAGES = ["corpus", "crawl", "filters", "pipeline", "train"]
ERROR = re.compile(r"^(?P<path>[\w/]+)\.py:\d+: error: ")


def module_of(path: str) -> str:
    parts = path.split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def run_mypy() -> Counter[str]:
    """Errors per module of a mypy run over the packages (configuration: pyproject.toml [tool.mypy])."""
    out = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    if out.returncode not in (0, 1):  # 2: mypy itself failed (bad config, crash)
        raise SystemExit(f"mypy failed:\n{out.stdout}{out.stderr}")
    counts: Counter[str] = Counter()
    for line in out.stdout.splitlines():
        m = ERROR.match(line)
        if m:
            counts[module_of(m["path"])] += 1
    return counts


def budget_key(module: str, budgets: dict[str, int]) -> str | None:
    """The baseline entry that covers `module`: itself or the nearest package or module above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in budgets:
            return key
    return None


def compare(counts: Counter[str], budgets: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """(problems, errors per baseline entry)."""
    used: Counter[str] = Counter()
    problems = []
    for module, n in sorted(counts.items()):
        key = budget_key(module, budgets)
        if key is None:
            problems.append(f"{module}: {n} mypy error(s) in a module without a baseline (budget 0)")
        else:
            used[key] += n
    for key, n in sorted(used.items()):
        if n > budgets[key]:
            problems.append(f"{key}: {n} mypy errors, the baseline allows {budgets[key]}")
    return problems, {k: used.get(k, 0) for k in budgets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="lower the baseline to today's counts")
    args = parser.parse_args(argv)
    budgets: dict[str, int] = json.loads(BASELINE.read_text())
    counts = run_mypy()
    problems, used = compare(counts, budgets)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(
            f"mypy: more errors than {BASELINE.relative_to(ROOT)} allows; run `python -m mypy "
            f"{' '.join(PACKAGES)}` and fix them",
            file=sys.stderr,
        )
        return 1
    shrunk = {k: n for k, n in used.items() if n < budgets[k]}
    if shrunk and args.update:
        BASELINE.write_text(json.dumps({k: n for k, n in used.items() if n}, indent=2, sort_keys=True) + "\n")
        print(f"mypy: baseline lowered for {', '.join(sorted(shrunk))}")
    elif shrunk:
        print(
            f"mypy: {sum(budgets[k] - used[k] for k in shrunk)} error(s) fewer than the baseline "
            f"({', '.join(sorted(shrunk))}): run `python tests/lint/mypy_baseline.py --update` and commit it"
        )
    print(f"mypy: {sum(counts.values())} error(s), baseline {sum(budgets.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
