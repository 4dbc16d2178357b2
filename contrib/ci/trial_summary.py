"""
Run checks and trial, then print one closing line ``N passed, N failed, N skipped``.

CI reads that line; the exit status is non-zero when anything failed.  Each
``--pre`` command (lint, type check) counts as one test that passed or failed,
so a lint error can never hide behind a green test run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

_SUMMARY = re.compile(r"^(PASSED|FAILED) \((?P<counts>[^)]*)\)", re.MULTILINE)


def _counts(output: str) -> dict[str, int]:
    matches = list(_SUMMARY.finditer(output))
    if not matches:
        return {}
    counts: dict[str, int] = {}
    for part in matches[-1].group("counts").split(","):
        key, _, value = part.strip().partition("=")
        counts[key] = int(value)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pre", action="append", default=[], help="a check to run first")
    args, trial_args = parser.parse_known_args()

    passed = failed = skipped = 0
    for command in args.pre:
        print(f"$ {command}", flush=True)
        if subprocess.call(command, shell=True) == 0:
            passed += 1
        else:
            print(f"check failed: {command}", flush=True)
            failed += 1

    trial = [sys.executable, "-m", "twisted.trial", *trial_args]
    print(f"$ {' '.join(trial)}", flush=True)
    proc = subprocess.Popen(trial, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    code = proc.wait()
    counts = _counts("".join(lines))
    if not counts and code != 0:
        failed += 1  # trial itself broke (import error before any test ran)
    passed += counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed += counts.get("failures", 0) + counts.get("errors", 0)
    failed += counts.get("unexpectedSuccesses", 0)
    skipped += counts.get("skips", 0)
    if code != 0 and failed == 0:
        failed += 1
    print(f"{passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
