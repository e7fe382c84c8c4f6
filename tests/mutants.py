"""Mutation check: plant each bug of tests/mutants.yaml in a temporary copy, run its tests.

    .venv/bin/python tests/mutants.py [NAME ...] [--no-baseline] [--list]

For every mutant: copy the repository's ``mcssl/``, ``app/`` and ``tests/`` to a temporary
folder (the rest is linked), replace the one ``old`` snippet by ``new`` (it must occur exactly
once, else the mutant is "NOT APPLIED"), and run the mutant's pytest node ids there, with that
copy first on the path. A mutant is caught when pytest reports failing tests (exit code 1).
First, unless ``--no-baseline`` (CI: ``make test`` has just run them), the union of the listed
tests runs on an unmutated copy and must pass (else every mutant would look caught). Exit code
0 only if every mutant applied and was caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LIST = REPO / "tests" / "mutants.yaml"
COPIED = ("mcssl", "app", "tests", "pyproject.toml")  # the rest of the top level is linked
SKIPPED = (".git", ".venv", "runs", ".pytest_cache", ".ruff_cache")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: list[str]
    why: str


def load_mutants(path: Path = LIST) -> list[Mutant]:
    return [Mutant(**m) for m in yaml.safe_load(path.read_text())]


def make_copy(dst: Path) -> None:
    """dst/ gets a copy of the package and the tests, links to everything else."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for entry in REPO.iterdir():
        if entry.name in SKIPPED:
            continue
        target = dst / entry.name
        if entry.name in COPIED:
            if entry.is_dir():
                shutil.copytree(entry, target, ignore=ignore)
            else:
                shutil.copy2(entry, target)
        else:
            target.symlink_to(entry)


def apply(root: Path, m: Mutant) -> str:
    """Plants the mutation; -> '' or why it could not be planted."""
    path = root / m.file
    if not path.is_file():
        return f"{m.file} does not exist"
    if not path.resolve().is_relative_to(root.resolve()):  # planting there would edit the repo
        return f"{m.file} is linked, not copied: add its top-level folder to COPIED"
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        return f"snippet found {n} times in {m.file} (must be exactly once)"
    path.write_text(text.replace(m.old, m.new))
    return ""


def run_tests(root: Path, tests: list[str]) -> tuple[int, str]:
    """pytest on ``tests`` inside ``root`` -> (exit code, last lines of its output)."""
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        res = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s"
    lines = (res.stdout + res.stderr).strip().splitlines()
    return res.returncode, "\n".join(lines[-3:])


def check_copy_is_used(root: Path) -> None:
    """The copy's package must shadow the editable install, or nothing would be tested."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import mcssl; print(mcssl.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    where = Path(out.stdout.strip())
    if root.resolve() not in where.resolve().parents:
        sys.exit(f"mutants: the copy is not imported ({where}); check PYTHONPATH handling")


def one(m: Mutant) -> tuple[str, float, str]:
    """-> (verdict, seconds, detail) for one mutant."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mcssl-mutant-{m.name}-") as tmp:
        root = Path(tmp)
        make_copy(root)
        problem = apply(root, m)
        if problem:
            return "NOT APPLIED", time.perf_counter() - t0, problem
        rc, tail = run_tests(root, m.tests)
    verdict = {1: "caught", 0: "NOT CAUGHT"}.get(rc, f"ERROR (pytest exit {rc})")
    return verdict, time.perf_counter() - t0, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="only these mutants (default: all)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = ap.parse_args(argv)
    mutants = load_mutants()
    unknown = set(args.names) - {m.name for m in mutants}
    if unknown:
        ap.error(f"unknown mutant(s): {', '.join(sorted(unknown))}")
    if args.names:
        mutants = [m for m in mutants if m.name in args.names]
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.file}: {m.why}")
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mcssl-mutant-baseline-") as tmp:
        make_copy(Path(tmp))
        check_copy_is_used(Path(tmp))
        if not args.no_baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            rc, tail = run_tests(Path(tmp), tests)
            if rc != 0:
                print(f"baseline: the unmutated tests fail (pytest exit {rc}):\n{tail}")
                return 1
            secs = time.perf_counter() - started
            print(f"baseline: {len(tests)} test ids pass unmutated ({secs:.0f} s)", flush=True)
    bad = 0
    for m in mutants:
        verdict, secs, detail = one(m)
        print(f"{verdict:12s} {m.name:30s} {secs:5.0f} s  {m.file}: {m.why}", flush=True)
        if verdict != "caught":
            bad += 1
            print("    " + detail.replace("\n", "\n    "))
    total = time.perf_counter() - started
    print(f"{len(mutants) - bad}/{len(mutants)} mutants caught in {total:.0f} s", end="")
    print(f"; {bad} not caught or not applied" if bad else "")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
