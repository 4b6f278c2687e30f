"""A trainer's preemption contract without a model, for the SLURM resubmission test.

First attempt: count steps until SIGTERM arrives, save the step to --state (outside the job's
declared output, which Snakemake deletes after a failure) and exit 1 so the job fails and gets
resubmitted. Next attempt: find the state, resume from it, write --out and exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

GIVE_UP_S = 240  # no SIGTERM by then: the profile's signal did not arrive; fail loudly


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="resumable state (JSON)")
    parser.add_argument("--out", type=Path, required=True, help="the declared output (JSON)")
    parser.add_argument(
        "--save-seconds",
        type=float,
        default=5.0,
        help="how long saving the state takes after SIGTERM (a checkpoint is not instant)",
    )
    args = parser.parse_args(argv)

    stop = {"signal": None}
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    job = os.environ.get("SLURM_JOB_ID", "?")
    if args.state.exists():
        state = json.loads(args.state.read_text())
        result = {
            "resumed_from_step": state["step"],
            "saved_by_job": state["job"],
            "saved_at": state["saved_at"],
            "job": job,
        }
        args.out.write_text(json.dumps(result))
        print(f"job {job}: resumed from step {state['step']}", flush=True)
        return 0

    start, step = time.monotonic(), 0
    while stop["signal"] is None:
        if time.monotonic() - start > GIVE_UP_S:
            print(f"job {job}: no SIGTERM after {GIVE_UP_S} s", flush=True)
            return 2
        time.sleep(0.2)
        step += 1
    print(f"job {job}: SIGTERM at step {step}, saving", flush=True)
    time.sleep(args.save_seconds)
    args.state.write_text(json.dumps({"step": step, "job": job, "saved_at": time.time()}))
    print(f"job {job}: state saved", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
