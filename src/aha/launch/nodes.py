"""`python -m aha nodes` and `python -m aha node`: one ZeRO-3 run across several nodes.

TRL's multi-node recipe (its GRPO docs; open-r1's slurm/train.slurm): every node runs
`accelerate launch --num_machines N --machine_rank R --main_process_ip <first node>
--rdzv_backend c10d` under `srun --kill-on-bad-exit=1`, and in server mode one more node serves
vLLM. Here:

- `aha nodes` is the train job's command (its rule runs it as is: `mpi="srun"`). It finds the
  job's nodes (`scontrol show hostnames $SLURM_JOB_NODELIST`): the first N train, and in server
  mode the last one runs `aha with-vllm-server --whole-node`, bound to that node's address, around
  an `aha nodes` of the training nodes. It then runs one `aha node` per training node: with
  `srun --kill-on-bad-exit=1 --nodes N --ntasks-per-node 1`, or, rehearsing on one machine
  (`--rehearsal` outside a SLURM job of enough nodes), as N local processes that stand in for the
  nodes, on 127.0.0.1, stopped together when one fails as srun stops them.
- `aha node` is one node: its machine rank is SLURM_PROCID (or `--machine-rank`). Machine 0
  chooses a free port for the c10d rendezvous on its own node and writes it, with its address,
  to a file in the run's trainer folder (a shared filesystem, as the rules' outputs are); the
  others wait for it, bounded. Then it execs `accelerate launch`.

Ports are per job: the rendezvous port is chosen when the job starts, on the node that serves it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aha.cli import add_json, argv_list, failing_as, parser, split_command
from aha.formats import write_atomic
from aha.launch.commands import LaunchError
from aha.launch.process_tree import KILL_WAIT_S
from aha.launch.vllm_serve import HOST

RENDEZVOUS_GLOB = "rendezvous-*.json"
DEFAULT_RENDEZVOUS_TIMEOUT_S = 600.0  # machine 0 may wait in the queue for its node's imports
SRUN = ("srun", "--kill-on-bad-exit=1")


def _scontrol(*args: str) -> str:
    if not shutil.which("scontrol"):
        raise LaunchError(f"in a SLURM job but no scontrol on PATH (for `scontrol {args[0]}`)")
    try:
        out = subprocess.run(
            ["scontrol", *args], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`scontrol {' '.join(args)}` did not answer in 60 s") from None
    if out.returncode != 0:
        hint = ""
        if "configuration" in out.stderr:  # the job step keeps SLURM_JOB_ID, not SLURM_CONF
            hint = "; where slurm.conf is not in scontrol's default place, export SLURM_CONF"
        raise LaunchError(f"scontrol {' '.join(args)}: {out.stderr.strip()}{hint}")
    return out.stdout


def job_fields(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`scontrol show job` of the SLURM job this runs in, as KEY=VALUE fields; {} outside one."""
    if not env.get("SLURM_JOB_ID"):
        return {}
    text = _scontrol("show", "job", "--oneliner", env["SLURM_JOB_ID"])
    return dict(f.split("=", 1) for f in text.split() if "=" in f)


def cpus_per_node(fields: Mapping[str, str]) -> int | None:
    """The job's CPUs per node (NumCPUs / NumNodes): a bare srun in the job step would give each
    task one."""
    try:
        return max(1, int(fields["NumCPUs"]) // int(fields["NumNodes"]))
    except (KeyError, ValueError):
        return None


def slurm_hosts(env: Mapping[str, str] = os.environ) -> list[str]:
    """The hostnames of the SLURM job this runs in, in order; [] outside a job.

    The node list comes from SLURM_JOB_NODELIST, or from `scontrol show job` where only the
    job's id is left (the SLURM plugin's job step keeps SLURM_JOB_ID and drops the rest).
    """
    nodelist = env.get("SLURM_JOB_NODELIST") or job_fields(env).get("NodeList", "")
    if not nodelist or nodelist == "(null)":
        return []
    return _scontrol("show", "hostnames", nodelist).split()


def plan_hosts(
    needed: int, slurm: Sequence[str], *, rehearsal: bool, run: str = "the run"
) -> list[str] | None:
    """The `needed` hosts the run takes: the SLURM job's first ones, or None where a rehearsal
    stands the nodes in on this machine. LaunchError where neither can be."""
    if len(slurm) >= needed:
        return list(slurm[:needed])
    if rehearsal:
        return None
    where = f"a SLURM job of {len(slurm)} node(s)" if slurm else "no SLURM job"
    raise LaunchError(
        f"{run}: needs {needed} nodes, but runs in {where}; run it with the slurm profile "
        "(the train rule asks for the run's nodes)"
    )


def address_of(host: str) -> str:
    """The IPv4 address `host` resolves to, as every node of the job resolves it."""
    try:
        return socket.gethostbyname(host)
    except OSError as err:
        raise LaunchError(f"cannot resolve node {host!r}: {err}") from None


def free_port(address: str) -> int:
    """A port free on this node now (the rendezvous binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address if address != HOST else "", 0))
        return int(sock.getsockname()[1])


def publish_rendezvous(path: Path, address: str) -> dict[str, Any]:
    """Machine 0: choose the rendezvous port on this node and write it (atomically) for the rest."""
    point = {"address": address, "port": free_port(address), "job": os.environ.get("SLURM_JOB_ID")}
    write_atomic(path, json.dumps(point) + "\n")
    return point


def await_rendezvous(path: Path, timeout: float, poll: float = 0.5) -> dict[str, Any]:
    """Another machine: the point machine 0 wrote; LaunchError naming the file after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"machine 0 wrote no rendezvous to {path} in {timeout:.0f} s "
                    "(did its node start? see the other nodes' lines in this log)"
                ) from None
            time.sleep(poll)


def accelerate_argv(
    python: str,
    point: Mapping[str, Any],
    *,
    nodes: int,
    machine_rank: int,
    per_node: int,
    args: Sequence[str],
) -> list[str]:
    """`accelerate launch` of one node: TRL's multi-node flags, then the run's own."""
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        str(nodes),
        "--machine_rank",
        str(machine_rank),
        "--num_processes",
        str(nodes * per_node),
        "--main_process_ip",
        str(point["address"]),
        "--main_process_port",
        str(point["port"]),
        "--rdzv_backend",
        "c10d",
        # Machine 0 hosts the c10d store at its published port, no other machine: torch would
        # otherwise let any agent whose address matches bind it, which stand-in nodes on one
        # machine all do, and accelerate then finds machine 0's port taken.
        "--rdzv_conf",
        f"is_host={1 if machine_rank == 0 else 0}",
        *args,
    ]


def node_argv(
    python: str, *, nodes: int, per_node: int, rendezvous: Path, head: str, args: Sequence[str]
) -> list[str]:
    """`aha node` as each training node runs it."""
    return [
        python,
        "-m",
        "aha",
        "node",
        "--nodes",
        str(nodes),
        "--per-node",
        str(per_node),
        "--rendezvous",
        str(rendezvous),
        "--head",
        head,
        "--",
        *args,
    ]


def srun_argv(hosts: Sequence[str], command: Sequence[str], cpus: int | None = None) -> list[str]:
    """One task per host with the node's CPUs, every task stopped when one fails."""
    n = str(len(hosts))
    argv = [*SRUN, "--nodes", n, "--ntasks", n, "--ntasks-per-node", "1"]
    argv += ["--cpus-per-task", str(cpus)] if cpus else []
    return [*argv, "--nodelist", ",".join(hosts), *command]


def _log(message: str) -> None:
    print(f"aha nodes: {message}", file=sys.stderr, flush=True)


def forwarding_call(argv: Sequence[str]) -> int:
    """Run `argv` and return its status; SIGTERM/SIGINT meanwhile go to it, and this process
    waits for it: a preempted job's launcher must outlive what it launched (its save, the vLLM
    server's stop), or the job would end while they still run."""
    child = subprocess.Popen(argv)

    def forward(signum: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    return 128 - status if status < 0 else status


def run_local_machines(commands: Sequence[Sequence[str]], grace: float) -> int:
    """Run the stand-in nodes on this machine as srun --kill-on-bad-exit runs them on a cluster:
    the first to fail stops the rest (SIGTERM, SIGKILL after `grace`); SIGTERM/SIGINT to this
    process goes to each. The worst status."""
    children = [
        subprocess.Popen(cmd, env={**os.environ, "AHA_MACHINE_RANK": str(i)})
        for i, cmd in enumerate(commands)
    ]

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop_at: float | None = None  # after one failed: SIGKILL to the rest from then on
        first: int | None = None  # the status of the node that failed first
        while [c for c in children if c.poll() is None]:  # polls every one
            failed = [c.returncode for c in children if c.returncode not in (None, 0)]
            if failed and stop_at is None:
                first = failed[0]
                _log(f"a node exited with status {first}: stopping the others")
                for child in children:
                    if child.poll() is None:
                        child.terminate()
                stop_at = time.monotonic() + grace
            if stop_at is not None and time.monotonic() > stop_at:
                for child in children:
                    if child.poll() is None:
                        child.kill()
                        child.wait(timeout=KILL_WAIT_S)
            time.sleep(0.2)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    bad = [c.returncode for c in children if c.returncode]
    status = first if first is not None else (bad[0] if bad else 0)
    return 128 - status if status < 0 else status


def _nodes_parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, "Train one run across nodes: one `aha node` per node. Usage: %(prog)s "
               "--nodes N --per-node G --rendezvous-dir D [options] -- ACCELERATE_ARGS...")  # fmt: skip
    p.add_argument("--nodes", type=int, required=True, help="nodes that train")
    p.add_argument("--per-node", type=int, required=True, help="training processes per node")
    p.add_argument("--rendezvous-dir", required=True, help="shared folder for the rendezvous file")
    p.add_argument("--rehearsal", action="store_true",
                   help="outside a SLURM job of enough nodes, stand the nodes in on this machine")  # fmt: skip
    p.add_argument("--hosts", help="comma-separated training hosts (default: the SLURM job's)")
    add_json(p, "--server-wrapper", argv_list, required=False,
             help="JSON argv of `aha with-vllm-server ... ` (server mode): run on one more node, "
             "the last, around the training nodes")  # fmt: skip
    p.add_argument("--grace", type=float, default=60.0,
                   help="stand-in nodes: seconds between SIGTERM and SIGKILL after one fails")  # fmt: skip
    p.add_argument("--name", default="the run", help="the run, for error messages")
    return p


def nodes_cli(argv: list[str], prog: str) -> None:
    own, rest = split_command(argv)
    p = _nodes_parser(prog)
    args = p.parse_args(own)
    if not rest:
        p.error("no accelerate arguments: put them after `--`")
    with failing_as(prog, LaunchError):
        sys.exit(launch_nodes(args, rest))


def launch_nodes(args: argparse.Namespace, accelerate_args: list[str]) -> int:
    python = sys.executable
    rendezvous_dir = Path(args.rendezvous_dir)
    if args.hosts:
        hosts: list[str] | None = args.hosts.split(",")
    else:
        needed = args.nodes + (1 if args.server_wrapper else 0)
        hosts = plan_hosts(needed, slurm_hosts(), rehearsal=args.rehearsal, run=args.name)
    if args.server_wrapper:  # the last node serves, around an `aha nodes` of the others
        for stale in rendezvous_dir.glob(RENDEZVOUS_GLOB):
            stale.unlink(missing_ok=True)
        inner = [python, "-m", "aha", "nodes", "--nodes", str(args.nodes),
                 "--per-node", str(args.per_node), "--rendezvous-dir", str(rendezvous_dir),
                 "--grace", str(args.grace), "--name", args.name]  # fmt: skip
        if hosts is None:
            inner += ["--rehearsal", "--", *accelerate_args]
            wrapper = [*args.server_wrapper, "--host", HOST, "--whole-node", "--", *inner]
            _log(f"rehearsal: {args.nodes} stand-in nodes and the vLLM server on this machine")
            return forwarding_call(wrapper)
        inner += ["--hosts", ",".join(hosts[:-1]), "--", *accelerate_args]
        server = hosts[-1]
        wrapper = [*args.server_wrapper, "--host", address_of(server), "--whole-node", "--", *inner]
        _log(f"vLLM server on {server}; training on {', '.join(hosts[:-1])}")
        return forwarding_call(srun_argv([server], wrapper, cpus_per_node(job_fields())))
    point_file = (
        rendezvous_dir / f"rendezvous-{os.environ.get('SLURM_JOB_ID', 'local')}-{os.getpid()}.json"
    )
    rendezvous_dir.mkdir(parents=True, exist_ok=True)
    if hosts is None:
        cmd = node_argv(python, nodes=args.nodes, per_node=args.per_node,
                        rendezvous=point_file, head=HOST, args=accelerate_args)  # fmt: skip
        _log(f"rehearsal: {args.nodes} stand-in nodes on this machine ({HOST})")
        try:
            return run_local_machines([cmd] * args.nodes, args.grace)
        finally:
            point_file.unlink(missing_ok=True)
    cmd = node_argv(python, nodes=args.nodes, per_node=args.per_node,
                    rendezvous=point_file, head=hosts[0], args=accelerate_args)  # fmt: skip
    _log(f"training on {', '.join(hosts)}; rendezvous at {hosts[0]} ({point_file})")
    try:
        return forwarding_call(srun_argv(hosts, cmd, cpus_per_node(job_fields())))
    finally:
        point_file.unlink(missing_ok=True)


def machine_rank(explicit: int | None, env: Mapping[str, str] = os.environ) -> int:
    """This node's rank: `--machine-rank`, a stand-in's AHA_MACHINE_RANK, or srun's SLURM_PROCID."""
    for value in (explicit, env.get("AHA_MACHINE_RANK"), env.get("SLURM_PROCID")):
        if value is not None and str(value) != "":
            return int(value)
    raise LaunchError("no machine rank: run under srun (SLURM_PROCID) or pass --machine-rank")


def node_cli(argv: list[str], prog: str) -> None:
    own, rest = split_command(argv)
    p = parser(prog, "One node of a run across nodes: rendezvous, then `accelerate launch`. "
               "Usage: %(prog)s --nodes N --per-node G --rendezvous FILE --head HOST -- ARGS")  # fmt: skip
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--per-node", type=int, required=True)
    p.add_argument("--rendezvous", required=True, help="file machine 0 writes its address to")
    p.add_argument("--head", required=True, help="hostname of machine 0 (the first node)")
    p.add_argument("--machine-rank", type=int, help="default: AHA_MACHINE_RANK or SLURM_PROCID")
    p.add_argument("--timeout", type=float, default=DEFAULT_RENDEZVOUS_TIMEOUT_S,
                   help="seconds to wait for machine 0's rendezvous (default %(default).0f)")  # fmt: skip
    args = p.parse_args(own)
    with failing_as(prog, LaunchError):
        rank = machine_rank(args.machine_rank)
        path = Path(args.rendezvous)
        if rank == 0:
            point = publish_rendezvous(path, address_of(args.head))
        else:
            point = await_rendezvous(path, args.timeout)
        argv = accelerate_argv(sys.executable, point, nodes=args.nodes, machine_rank=rank,
                               per_node=args.per_node, args=rest)  # fmt: skip
        print(f"aha node {rank}/{args.nodes} on {socket.gethostname()}: rendezvous "
              f"{point['address']}:{point['port']}", file=sys.stderr, flush=True)  # fmt: skip
        os.execv(argv[0], argv)
