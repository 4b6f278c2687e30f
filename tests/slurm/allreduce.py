"""One rank of a torch.distributed gloo all_reduce across SLURM nodes (tests/integration/test_slurm_nodes.py).

    allreduce.py OUTDIR

Started by `torch.distributed.run` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from its c10d
rendezvous), or directly by `srun` with MASTER_ADDR and MASTER_PORT set: then the rank and world
size are SLURM_PROCID and SLURM_NTASKS. Each rank sums rank + 1 over all ranks and writes what it
saw to OUTDIR/rank{RANK}.json (a shared directory: the test reads every node's file).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def first_node() -> str:
    """The first host of the job's nodes, as `scontrol show hostnames` expands the list."""
    out = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
        text=True,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return out.split()[0]


def main(outdir: Path) -> None:
    if "RANK" not in os.environ:  # plain srun: one rank a task
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    # A rank that cannot reach the others fails within a minute, naming the rendezvous.
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    host = socket.gethostname()
    first = first_node()
    seen = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "sum": total.item(),
        "hostname": host,
        "address": socket.gethostbyname(host),
        "first_node": first,
        "first_node_address": socket.gethostbyname(first),
        "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        **{k: v for k, v in os.environ.items() if k.startswith("SLURM_")},
    }
    (outdir / f"rank{rank}.json").write_text(json.dumps(seen, indent=1, sort_keys=True))
    print(f"rank {rank} of {seen['world_size']} on {host}: sum {seen['sum']}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
