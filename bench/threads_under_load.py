"""Seconds per GRPO step of the tiny run by torch threads and OpenMP wait policy, alone and
beside one busy process: which thread setting does not collapse when the machine is shared.

    .venv/bin/python bench/threads_under_load.py [--model models/tiny-base] \
        [--data-dir results/data] [--steps 10]

Runs bench/train_step.py (the workflow's own training code) once per setting, as a fresh
process, each with OMP_NUM_THREADS set as the rules set it; the neighbour is one Python process
spinning on a core for the whole measurement. Prints the median s/step (steps 2..N) and the
process CPU seconds per step of each setting. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEDIAN = re.compile(
    r"median \(steps [^)]*\): (?P<total>[0-9.]+) s/step .* cpu (?P<cpu>[0-9.]+) s/step"
)
# (label, torch threads, extra environment)
SETTINGS = (
    ("1 thread", 1, {}),
    ("2 threads", 2, {}),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("2 threads, GOMP_SPINCOUNT=10000", 2, {"GOMP_SPINCOUNT": "10000"}),
    ("2 threads, GOMP_SPINCOUNT=1000", 2, {"GOMP_SPINCOUNT": "1000"}),
)


def measure(args: argparse.Namespace, threads: int, extra: dict[str, str]) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **extra}
    cmd = [
        sys.executable, str(HERE / "train_step.py"), "--model", args.model,
        "--data-dir", args.data_dir, "--steps", str(args.steps), "--threads", str(threads),
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    found = MEDIAN.search(out)
    if found is None:
        raise SystemExit(f"no median line in bench/train_step.py's output:\n{out[-2000:]}")
    return float(found["total"]), float(found["cpu"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-base")
    parser.add_argument("--data-dir", default="results/data")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--only", nargs="*", help="settings to run (labels of SETTINGS; default: all)"
    )
    args = parser.parse_args()
    rows = []
    for neighbour in (False, True):
        spinner = (
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
        )
        try:
            for label, threads, extra in SETTINGS:
                if args.only and label not in args.only:
                    continue
                total, cpu = measure(args, threads, extra)
                rows.append((label, "one busy process" if neighbour else "idle", total, cpu))
                print(f"{rows[-1][1]:>16} | {label:<36} | {total:6.3f} s/step | cpu {cpu:6.3f}")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    print("\n| machine | setting | s/step (median) | CPU s/step |\n|---|---|---|---|")
    for label, where, total, cpu in rows:
        print(f"| {where} | {label} | {total:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
