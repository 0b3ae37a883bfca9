#!/usr/bin/env python3
"""Run every case of every golden set under DIR against lift3d's own model code.

Prints one line per case (pass/fail, the worst tensor's max abs error and its
tolerance) and exits non-zero when any case fails. ``-v`` prints every tensor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.golden import CHECKERS, check_set, find_sets, read_model_name  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="a golden set folder, or a folder containing sets")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every tensor check")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on sets of models lift3d does not implement (default: report them as SKIP)",
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_grad_enabled(False)
    failures = 0
    passed = 0
    for root in args.dirs:
        sets = find_sets(root)
        if not sets:
            print(f"FAIL {root}: no golden.json found")
            failures += 1
        for set_dir in sets:
            model = read_model_name(set_dir)
            if model not in CHECKERS:
                status = "FAIL" if args.strict else "SKIP"
                print(f"{status} {set_dir} model={model}: lift3d has no implementation of this model")
                failures += 1 if args.strict else 0
                continue
            started = time.perf_counter()
            try:
                reports = check_set(set_dir, verbose=args.verbose)
            except Exception as error:  # a crash is a failure of every case in the set
                print(f"FAIL {set_dir} model={model}: {type(error).__name__}: {error}")
                failures += 1
                continue
            for report in reports:
                worst = report.worst()
                status = "PASS" if report.ok else "FAIL"
                if report.ok:
                    passed += 1
                else:
                    failures += 1
                where = f"{model}/{report.set_name}/{report.case}"
                if worst is None:
                    print(f"FAIL {where}: no tensors compared")
                    continue
                print(
                    f"{status} {where}: {len(report.checks)} tensors, worst {worst.name} "
                    f"max_abs_err={worst.max_abs_err:.3g} tol({worst.tolerance}) {worst.detail}".rstrip()
                )
                if args.verbose:
                    for check in report.checks:
                        mark = "ok " if check.ok else "BAD"
                        print(f"    {mark} {check.name}: max_abs_err={check.max_abs_err:.3g} tol({check.tolerance}) {check.detail}")
            print(f"     {set_dir}: {time.perf_counter() - started:.1f}s")
    print(f"{passed} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
