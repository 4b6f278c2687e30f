"""`python -m aha with-vllm-server`: run a training command beside vLLM's own `vllm serve`.

The wrapper owns the server's whole life: it chooses the job's ports, starts the server in its
own session on the last visible GPU, bound to 127.0.0.1, waits for `GET /health` (failing fast
if the server dies), checks that the port is the server's alone, runs the training command on
the other GPUs, and always stops the server afterwards: on success, on failure, and when the
wrapper itself gets SIGTERM or SIGINT. A GPU held by an orphaned server is the failure this
exists to prevent. `aha.launch.commands.train_command` builds the argv that calls it.

The server is what `trl vllm-serve` (deprecated in TRL 1.16) only execs: `vllm serve` with
VLLM_SERVER_DEV_MODE=1 (the weight-transfer endpoints TRL uses) and TRL's flags
(`server_command`). Ports are per job (`aha.launch.ports`): the HTTP port and TRL's weight-sync group
port are chosen free at start unless grpo pins them, and reach the trainer through
ENV_SERVER_URL and ENV_GROUP_PORT; its no_proxy names 127.0.0.1, so a cluster's http_proxy
never takes the trainer's requests. vLLM with several API servers sets SO_REUSEPORT, with which
a second server on the same port would silently take half the requests: after /health, and
every `--port-check-interval` seconds, every listener on the port must belong to the server.

Preemption: SLURM (`--signal=TERM@N`) sends SIGTERM to every process of the job, and the trainer
then saves at the end of its current step, which may still be generating through the server. So
the server runs with SIGTERM *blocked* (`aha.launch.process_tree.preexec` and SIGTERM_GUARD): an outside
SIGTERM stays pending, and the server is stopped only once the training command has exited, with
SIGINT (vLLM's and uvicorn's clean shutdown) and SIGKILL after `--server-grace`. The training
command's processes, ranks in their own sessions included (the wrapper is a child subreaper and
walks /proc), get the forwarded SIGTERM and SIGKILL after `--grace`; both graces come from the
run's stop budget (`aha.launch.commands.StopBudget`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import IO, Any

from aha.cli import add_json, argv_list, failing_as, parser, split_command
from aha.config import ENV_GROUP_PORT, ENV_SERVER_URL
from aha.launch.commands import DEFAULT_SIGNAL_LEAD_S, SERVER_GRACE_S, LaunchError, StopBudget
from aha.launch.ports import PortError, PortWatch, listening_inodes, reserve_ports
from aha.launch.process_tree import (
    KILL_WAIT_S,
    Family,
    descendants,
    guarded_env,
    preexec,
    process_table,
    sigterm_blocked,
    stop_tree,
)
from aha.launch.vllm_serve import (
    HOST,
    SERVER_ENV,
    local_no_proxy,
    server_command,
    server_flags,
    split_gpus,
)

__all__ = ["cli", "run_with_server", "server_flags"]
FREE_PORT_HINT = "rerun the job: it chooses other free ports"
PINNED_PORT_HINT = "remove grpo.vllm_server_port so that each job chooses a free port"
DEFAULT_GRACE_S = float(StopBudget(DEFAULT_SIGNAL_LEAD_S, "", True, True).wrapper_grace_s)


# The server is on this node: a cluster's http_proxy (without no_proxy) must not take the check.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ServerError(RuntimeError):
    """The vLLM server did not come up, went away or shares its port; says where its log is."""


def _exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _final_status(child: subprocess.Popen, fallback: int) -> int:
    """The status of a command that was just stopped: its own, else `fallback` (0 included:
    a stopped run must not look successful)."""
    with suppress(subprocess.TimeoutExpired):
        child.wait(timeout=KILL_WAIT_S)  # stop_tree is over: at worst stuck in I/O
    if child.returncode is None:
        return fallback
    return _exit_status(child.returncode) or fallback


def _log(message: str) -> None:
    print(f"with-vllm-server: {message}", file=sys.stderr, flush=True)


def _catch_signals(stack: ExitStack, got: list[int]) -> None:
    """Record the first SIGTERM/SIGINT in `got` (never raise mid-cleanup); restored on exit."""

    def on_signal(signum: int, _frame: Any) -> None:
        if not got:
            got.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        stack.callback(signal.signal, signum, signal.signal(signum, on_signal))


def _open_log(stack: ExitStack, server_log: str | None, command: Sequence[str]) -> IO[bytes] | None:
    """The server's log file (appended; its command line first), or None for our stderr."""
    if not server_log:
        return None
    Path(server_log).parent.mkdir(parents=True, exist_ok=True)
    log_file = stack.enter_context(open(server_log, "ab"))  # noqa: SIM115 - the stack closes it
    env = " ".join(f"{k}={v}" for k, v in SERVER_ENV.items())
    log_file.write(f"with-vllm-server: {env} {shlex.join(command)}\n".encode())
    log_file.flush()
    _log(f"vLLM server log: {server_log}")
    return log_file


def _start_server(
    stack: ExitStack,
    family: Family,
    command: Sequence[str],
    device: str,
    server_log: str | None,
    grace: float,
) -> subprocess.Popen:
    """Start: the server on `device`, in its own session with SIGTERM blocked, its output in
    `server_log`; the stack stops it (SIGINT, SIGKILL after `grace`)."""
    log = _open_log(stack, server_log, command)
    guard_dir = tempfile.mkdtemp(prefix="aha-vllm-server-")
    stack.callback(shutil.rmtree, guard_dir, ignore_errors=True)
    env = {**os.environ, **SERVER_ENV}
    if device:  # else (a node of its own) every GPU the node was given
        env["CUDA_VISIBLE_DEVICES"] = device
    server = family.popen(
        command,
        env=guarded_env(guard_dir, env),
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no terminal's Ctrl-C: stopped by us, after training
        preexec_fn=preexec(signal.SIGINT, block_sigterm=True),
    )
    stack.callback(_stop_server, family, grace)
    return server


def _stop_server(family: Family, grace: float) -> None:
    _log("stopping the vLLM server")
    stuck = stop_tree(family.members, signal.SIGINT, grace)
    if stuck:
        _log(f"still there after SIGKILL (uninterruptible?): {sorted(stuck)}")


def _wait_healthy(
    server: subprocess.Popen, url: str, timeout: float, got: list[int], poll: float, see: str
) -> bool:
    """True once `url` answers 200; False on a signal; ServerError if the server dies first or
    stays unhealthy for `timeout` s."""
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if got:
            return False
        if server.poll() is not None:
            status = _exit_status(server.returncode)
            raise ServerError(
                f"vLLM server exited with status {status} before answering {url}{see}"
            )
        if time.monotonic() > deadline:
            raise ServerError(f"vLLM server not healthy at {url} after {timeout:.0f} s{see}")
        time.sleep(poll)
    return not got


def _warn_unblocked(server: subprocess.Popen) -> None:
    table = process_table()
    tree = {server.pid, *descendants(server.pid, table)}
    exposed = sorted(
        pid
        for pid in tree
        if pid in table and not table[pid].exited and sigterm_blocked(pid) is False
    )
    if exposed:  # something unblocked it (not Python code, which the guard covers)
        _log(
            f"warning: server process(es) {exposed} have SIGTERM unblocked: a preemption "
            "SIGTERM would stop them before the trainer's checkpoint"
        )


def _own_port(server: subprocess.Popen, host: str, port: int, hint: str, see: str) -> PortWatch:
    """Health, after /health: every listener on the port is the server's (ServerError if not),
    and its processes keep SIGTERM blocked (a warning if not). The watch checks it again."""
    watch = PortWatch(server.pid, host, port, hint)
    if problem := watch.problem():
        raise ServerError(problem + see)
    if listening_inodes(port) is None:
        _log(f"warning: cannot check who listens on port {port} (no /proc/net/tcp)")
    _warn_unblocked(server)
    return watch


def _start_training(
    stack: ExitStack,
    family: Family,
    server: subprocess.Popen,
    command: Sequence[str],
    env: Mapping[str, str],
    grace: float,
) -> subprocess.Popen:
    """Start: the training command in its own session (signals come from us, to every process
    of its tree); the stack stops what is left of it (SIGTERM, SIGKILL after `grace`)."""
    child = family.popen(
        command,
        env={**os.environ, **env},
        start_new_session=True,
        preexec_fn=preexec(signal.SIGTERM, block_sigterm=False),
    )
    stack.callback(_stop_leftovers, family, server, grace)
    return child


def _training_env(
    host: str, base_url: str, group_port: int, devices: str, server_device: str
) -> dict[str, str]:
    """What the training command gets: its GPUs (none named: it trains on other nodes), the
    server's address, a no_proxy for it."""
    env = {
        **local_no_proxy(os.environ, host),
        ENV_SERVER_URL: base_url,
        ENV_GROUP_PORT: str(group_port),
    }
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = devices
        env["AHA_GPU_DEVICES"] = f"{devices},{server_device}"  # the job's, for rank 0's GPU log
    return env


def _supervise(
    child: subprocess.Popen,
    server: subprocess.Popen,
    family: Family,
    got: list[int],
    watch: PortWatch,
    grace: float,
    poll: float,
    check_every: float,
) -> int:
    """Wait for the training command; forward a signal, or stop it when the server dies or its
    port stops being its own. Returns the command's status."""

    def training() -> dict[int, int]:
        return family.members(exclude=server)

    check_at = time.monotonic() + check_every
    while child.poll() is None:
        if got:
            name = signal.Signals(got[0]).name
            _log(
                f"got {name}: forwarding it to the training command and all its processes "
                f"(grace {grace:.0f} s); the server stays up until they exit"
            )
            stop_tree(training, got[0], grace)
            status = _final_status(child, 128 + got[0])
            _log(f"training command exited with status {status} after {name}")
            return status
        problem = None
        if server.poll() is not None:
            problem = f"vLLM server exited with status {_exit_status(server.returncode)}"
        elif time.monotonic() > check_at:
            family.members()  # reaps adopted orphans that exited: no zombie pile-up
            problem = watch.problem()
            check_at = time.monotonic() + check_every
        if problem:
            _log(f"error during training: {problem}; stopping the training command")
            stop_tree(training, signal.SIGTERM, grace)
            return _final_status(child, 1)
        time.sleep(poll)
    status = _exit_status(child.returncode)
    _log(f"training command exited with status {status}")
    return status


def run_with_server(
    command: Sequence[str],
    server_command: Sequence[str],
    *,
    gpus: int,
    port: int,
    group_port: int,
    host: str = HOST,
    server_log: str | None = None,
    health_timeout: float = 900.0,
    grace: float = DEFAULT_GRACE_S,
    server_grace: float = SERVER_GRACE_S,
    poll: float = 0.5,
    port_check_interval: float = 10.0,
    port_hint: str = FREE_PORT_HINT,
    whole_node: bool = False,
) -> int:
    """Start the server (listening on `host`:`port`), wait for health, check that the port is
    its own, run `command`, always stop the server; the command's status.

    Returns 128 + N if the command died of signal N. Raises ServerError if the server dies,
    stays unhealthy or shares its port before `command` starts. SIGTERM or SIGINT to this
    process is forwarded to every process of `command`, which gets `grace` seconds (its
    checkpoint save, using the server) before SIGKILL; only then is the server stopped
    (SIGINT, SIGKILL after `server_grace`). Further signals while stopping are ignored.
    `whole_node`: the server has this node to itself (a run across nodes: `command` trains on
    the others), so it keeps every GPU the node has.
    """
    if whole_node:
        train_devices, server_device = "", os.environ.get("CUDA_VISIBLE_DEVICES", "")
    else:
        train_devices, server_device = split_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    base_url = f"http://{host}:{port}"
    see = f"; see {server_log}" if server_log else ""
    got: list[int] = []  # the first signal
    with ExitStack() as stack:  # teardown, in reverse: training, server, log, guard, signals
        _catch_signals(stack, got)
        family = Family()
        stack.callback(family.close)
        if whole_node:
            _log(f"server on this node ({host}, GPUs {server_device or 'all'}); training elsewhere")
        else:
            _log(f"server on GPU {server_device}, training on GPU(s) {train_devices}")
        _log(f"ports: server {base_url}, weight-sync group {group_port}")
        server = _start_server(
            stack, family, server_command, server_device, server_log, server_grace
        )
        if not _wait_healthy(server, f"{base_url}/health", health_timeout, got, poll, see):
            _log(f"got {signal.Signals(got[0]).name} before training started")
            return 128 + got[0]
        watch = _own_port(server, host, port, port_hint, see)
        _log(f"server healthy at {base_url}/health; starting: {shlex.join(command)}")
        env = _training_env(host, base_url, group_port, train_devices, server_device)
        child = _start_training(stack, family, server, command, env, grace)
        return _supervise(child, server, family, got, watch, grace, poll, port_check_interval)
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions


def _stop_leftovers(family: Family, server: subprocess.Popen, grace: float) -> None:
    def left() -> dict[int, int]:
        return family.members(exclude=server)

    leftover = left()
    if leftover:
        _log(f"stopping {len(leftover)} leftover process(es) of the training command")
        stop_tree(left, signal.SIGTERM, grace)


DESCRIPTION = (
    "Run a training command next to vLLM's `vllm serve` on the last GPU, bound to 127.0.0.1 on "
    "ports chosen for this job; always stop the server afterwards. "
    "Usage: %(prog)s --model M --gpus N [options] -- CMD..."
)
# The options that run_with_server takes as they are (argparse's names are its parameters').
PASSED_ON = (
    "gpus",
    "host",
    "server_log",
    "health_timeout",
    "grace",
    "server_grace",
    "port_check_interval",
    "whole_node",
)


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be a JSON mapping")
    return value


def _server_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add("--model", required=True, help="model the server serves (Hub id or dir)")
    add(
        "--gpus",
        type=int,
        required=True,
        help="GPUs of the job: the last visible one serves, the others run CMD",
    )
    add("--port", type=int, help="server port, pinned by grpo.vllm_server_port (default: free)")
    add(
        "--group-port",
        type=int,
        help="TRL's weight-sync group port, pinned by grpo.vllm_group_port (default: free)",
    )
    add("--host", default=HOST, help="address the server listens on (default %(default)s)")
    add(
        "--whole-node",
        action="store_true",
        help="the server has the node to itself (a run across nodes): every GPU of the node; "
        "CMD trains on the other nodes",
    )
    add_json(
        group,
        "--server-args",
        _mapping,
        default="{}",
        help="JSON mapping of extra `vllm serve` options (the run's vllm_server), e.g. "
        '\'{"gpu_memory_utilization": 0.5, "max_model_len": 2048}\'',
    )
    add("--server-log", help="file for the server's output (default: this process's stderr)")
    add_json(
        group,
        "--server-command",
        argv_list,
        required=False,
        help="JSON list replacing `python -m vllm.entrypoints.cli.main serve` (tests use a "
        "stand-in server); MODEL, --host, --port and the server flags are appended",
    )


def _timing_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add(
        "--health-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for GET /health to answer 200 (default %(default).0f)",
    )
    add(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds the training command's processes get between SIGTERM (their checkpoint "
        "save) and SIGKILL (default %(default).0f: the stop budget of a "
        f"{DEFAULT_SIGNAL_LEAD_S} s SIGTERM lead, aha.launch.commands.StopBudget)",
    )
    add(
        "--server-grace",
        type=float,
        default=float(SERVER_GRACE_S),
        help="seconds the server gets between SIGINT and SIGKILL (default %(default).0f)",
    )
    add(
        "--port-check-interval",
        type=float,
        default=10.0,
        help="seconds between checks that only the server listens on its port (default 10)",
    )


def _parser(prog: str) -> argparse.ArgumentParser:
    p = parser(prog, DESCRIPTION)
    _server_options(p.add_argument_group("the server"))
    _timing_options(p.add_argument_group("timing (seconds)"))
    return p


def _server_argv(args: argparse.Namespace, port: int) -> list[str]:
    """`vllm serve` as TRL runs it, or --server-command's stand-in with the same arguments."""
    argv = server_command(args.model, port=port, options=args.server_args, host=args.host)
    if args.server_command:
        argv = [*args.server_command, *argv[argv.index("serve") + 1 :]]
    return argv


def cli(argv: list[str], prog: str) -> None:
    own, command = split_command(argv)
    p = _parser(prog)
    args = p.parse_args(own)
    if not command:
        p.error("no training command: put it after `--`")
    with failing_as(prog, LaunchError, ServerError, PortError):
        ports = reserve_ports(
            {"grpo.vllm_server_port": args.port, "grpo.vllm_group_port": args.group_port}
        )
        port = ports["grpo.vllm_server_port"]
        status = run_with_server(
            command,
            _server_argv(args, port),
            port=port,
            group_port=ports["grpo.vllm_group_port"],
            port_hint=PINNED_PORT_HINT if args.port is not None else FREE_PORT_HINT,
            **{name: getattr(args, name) for name in PASSED_ON},
        )
    sys.exit(status)
