"""`python -m aha with-vllm-server`: run a training command beside a `trl vllm-serve` server.

The wrapper owns the server's whole life: it starts the server in its own session on the last
visible GPU, waits for `GET /health` (failing fast if the server dies), runs the training
command on the other GPUs, and always stops the server afterwards: on success, on failure, and
when the wrapper itself gets SIGTERM or SIGINT. A GPU held by an orphaned server is the failure
this exists to prevent. `aha.launch.train_command` builds the argv that calls it.

Preemption: SLURM (`--signal=TERM@300`) sends SIGTERM to every process of the job, and the
trainer then saves at the end of its current step, which may still be generating through the
server. So the server runs with SIGTERM *blocked* (the mask is inherited by everything it
starts, and Python's `signal.signal` does not unblock it; SIGTERM_GUARD stops multiprocessing
from unblocking it): an outside SIGTERM stays pending, and the server is stopped only once the
training command has exited, with SIGINT (vLLM's and uvicorn's clean shutdown, as Ctrl-C) and
SIGKILL after `--server-grace`.

Process trees, not groups: torchrun starts each rank in its own session, so a signal to the
training command's process group misses the ranks. The wrapper is a child subreaper (orphans
are re-parented to it, not to init), finds descendants by walking /proc, and signals each of
them and their groups: a forwarded SIGTERM reaches every rank so each can save, and SIGKILL
after `--grace` (default torchrun's own shutdown timeout + 60 s) leaves nothing behind.
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
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from aha.launch import DEFAULT_PORT, ELASTIC_SHUTDOWN_TIMEOUT_S, LaunchError
from aha.process_tree import (
    KILL_WAIT_S,
    Family,
    descendants,
    preexec,
    process_table,
    sigterm_blocked,
    stop_tree,
)

# The training command's grace: torchrun waits ELASTIC_SHUTDOWN_TIMEOUT_S for its ranks (a
# ZeRO-3 save of a 3B model is ~43 GB), the margin covers its own exit.
DEFAULT_GRACE_S = float(ELASTIC_SHUTDOWN_TIMEOUT_S + 60)
DEFAULT_SERVER_GRACE_S = 30.0  # the server saves nothing: a short SIGINT -> SIGKILL gap

# Put on the server's PYTHONPATH as sitecustomize.py, so it runs in every Python process of the
# server (spawned ones too): multiprocessing's resource tracker, which vLLM starts (spawn,
# SharedMemory), unblocks SIGINT and SIGTERM in the process that starts it, undoing the mask.
SIGTERM_GUARD = '''\
"""Written by aha.vllm_server: SIGTERM stays blocked in the vLLM server, stopped after training."""
import importlib.machinery, importlib.util, os, signal, sys

_unguarded = signal.pthread_sigmask


def pthread_sigmask(how, mask):
    mask = set(mask)
    if how == signal.SIG_UNBLOCK:
        mask.discard(signal.SIGTERM)
    elif how == signal.SIG_SETMASK:
        mask.add(signal.SIGTERM)
    return _unguarded(how, mask)


signal.pthread_sigmask = pthread_sigmask
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None and _spec.loader is not None:  # the sitecustomize this one shadows
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
'''


def server_flags(options: dict[str, Any]) -> list[str]:
    """`trl vllm-serve` flags from the config's vllm_server mapping (TRL's underscore names).

    True -> `--flag`; False -> `--flag false` (TRL's parser reads booleans); None is left out;
    lists and mappings are passed as JSON.
    """
    flags: list[str] = []
    for key, value in options.items():
        if key in {"model", "port"}:
            raise LaunchError(
                f"vllm_server.{key}: set by the workflow (model, grpo.vllm_server_port)"
            )
        if value is None:
            continue
        flag = f"--{key}"
        if value is True:
            flags.append(flag)
        elif value is False:
            flags += [flag, "false"]
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def split_gpus(gpus: int, visible: str | None) -> tuple[str, str]:
    """(training devices, server device): the server takes the last of the first `gpus` ids.

    `visible` is CUDA_VISIBLE_DEVICES as the scheduler set it (None: ids 0..gpus-1).
    """
    if gpus < 2:
        raise LaunchError(f"a vLLM server run needs at least 2 GPUs, got {gpus}")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    if visible is None:
        ids = [str(i) for i in range(gpus)]
    if len(ids) < gpus:
        raise LaunchError(
            f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={visible!r} lists {len(ids)}; "
            "request as many GPUs as --gpus"
        )
    ids = ids[:gpus]
    return ",".join(ids[:-1]), ids[-1]


def _guarded_env(directory: str, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with SIGTERM_GUARD first on PYTHONPATH (written to `directory`)."""
    Path(directory, "sitecustomize.py").write_text(SIGTERM_GUARD)
    path = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": os.pathsep.join([directory, *([path] if path else [])])}


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


# The server is on this node: a cluster's http_proxy (without no_proxy) must not take the check.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ServerError(RuntimeError):
    """The vLLM server did not come up (or went away); the message says where its log is."""


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


def run_with_server(
    command: Sequence[str],
    server_command: Sequence[str],
    *,
    gpus: int,
    port: int,
    host: str = "127.0.0.1",
    server_log: str | None = None,
    health_timeout: float = 900.0,
    grace: float = DEFAULT_GRACE_S,
    server_grace: float = DEFAULT_SERVER_GRACE_S,
    poll: float = 0.5,
) -> int:
    """Start the server, wait for health, run `command`, always stop the server; the status.

    Returns `command`'s exit status (128 + N if it died of signal N). Raises ServerError if the
    server dies or stays unhealthy before `command` starts. SIGTERM or SIGINT to this process
    is forwarded to every process of `command`, which gets `grace` seconds (its checkpoint
    save, using the server) before SIGKILL; only then is the server stopped (SIGINT, SIGKILL
    after `server_grace`). Further signals while stopping are ignored.
    """
    train_devices, server_device = split_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if _port_in_use(host, port):
        raise ServerError(
            f"port {port} is already in use; set grpo.vllm_server_port (and so --port) to a free one"
        )
    got: list[int] = []  # the first signal; the handler only records (never raises mid-cleanup)

    def on_signal(signum: int, _frame: Any) -> None:
        if not got:
            got.append(signum)

    guard_dir = tempfile.mkdtemp(prefix="aha-vllm-server-")
    family = Family()
    previous: dict[int, Any] = {}
    log_file = None
    server = child = None
    try:
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        if server_log:
            Path(server_log).parent.mkdir(parents=True, exist_ok=True)
            log_file = open(server_log, "ab")  # noqa: SIM115 - closed in finally
            _log(f"vLLM server log: {server_log}")
        _log(
            f"server on GPU {server_device}, training on GPU(s) {train_devices}: "
            f"{' '.join(server_command)}"
        )
        server = family.popen(
            server_command,
            env=_guarded_env(guard_dir, {**os.environ, "CUDA_VISIBLE_DEVICES": server_device}),
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # no terminal's Ctrl-C: stopped by us, after training
            preexec_fn=preexec(signal.SIGINT, block_sigterm=True),
        )
        url = f"http://{host}:{port}/health"
        deadline = time.monotonic() + health_timeout
        while not healthy(url):
            if got:
                _log(f"got {signal.Signals(got[0]).name} before training started")
                return 128 + got[0]
            if server.poll() is not None:
                raise ServerError(
                    f"vLLM server exited with status {_exit_status(server.returncode)} before "
                    f"answering {url}" + (f"; see {server_log}" if server_log else "")
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"vLLM server not healthy at {url} after {health_timeout:.0f} s"
                    + (f"; see {server_log}" if server_log else "")
                )
            time.sleep(poll)
        if got:
            _log(f"got {signal.Signals(got[0]).name} before training started")
            return 128 + got[0]
        table = process_table()
        exposed = sorted(
            pid
            for pid in {server.pid, *descendants(server.pid, table)}
            if pid in table and not table[pid].exited and sigterm_blocked(pid) is False
        )
        if exposed:  # something unblocked it (not Python code, which the guard covers)
            _log(
                f"warning: server process(es) {exposed} have SIGTERM unblocked: a preemption "
                "SIGTERM would stop them before the trainer's checkpoint"
            )
        _log(f"server healthy at {url}; starting: {' '.join(command)}")
        child = family.popen(
            command,
            # AHA_GPU_DEVICES: the job's GPUs, server's included, for the GPU log of rank 0
            env={
                **os.environ,
                "CUDA_VISIBLE_DEVICES": train_devices,
                "AHA_GPU_DEVICES": f"{train_devices},{server_device}",
            },
            start_new_session=True,  # signals come from us, to every process of its tree
            preexec_fn=preexec(signal.SIGTERM, block_sigterm=False),
        )

        def training() -> dict[int, int]:
            return family.members(exclude=server)

        reap_at = time.monotonic() + 10
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
            if server.poll() is not None:
                _log(
                    f"vLLM server exited with status {_exit_status(server.returncode)} during "
                    "training; stopping the training command"
                )
                stop_tree(training, signal.SIGTERM, grace)
                return _final_status(child, 1)
            if time.monotonic() > reap_at:  # adopted orphans that exited: no zombie pile-up
                family.members()
                reap_at = time.monotonic() + 10
            time.sleep(poll)
        status = _exit_status(child.returncode)
        _log(f"training command exited with status {status}")
        return status
    finally:
        if child is not None:
            left = family.members(exclude=server)
            if left:
                _log(f"stopping {len(left)} leftover process(es) of the training command")
                stop_tree(lambda: family.members(exclude=server), signal.SIGTERM, grace)
        if server is not None:
            _log("stopping the vLLM server")
            stuck = stop_tree(family.members, signal.SIGINT, server_grace)
            if stuck:
                _log(f"still there after SIGKILL (uninterruptible?): {sorted(stuck)}")
        family.close()
        shutil.rmtree(guard_dir, ignore_errors=True)
        if log_file is not None:
            log_file.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def vllm_serve_command(python: str = sys.executable) -> list[str]:
    """`trl vllm-serve` through this interpreter (no reliance on PATH)."""
    return [python, "-m", "trl.cli.main", "vllm-serve"]


def cli_with_vllm_server(argv: list[str], prog: str) -> None:
    if "--" not in argv:
        argv_opts, command = argv, []
    else:
        cut = argv.index("--")
        argv_opts, command = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a training command next to a `trl vllm-serve` server on the last GPU; "
        "always stop the server afterwards. Usage: %(prog)s --model M --gpus N [options] -- CMD...",
    )
    parser.add_argument("--model", required=True, help="model the server serves (Hub id or dir)")
    parser.add_argument(
        "--gpus",
        type=int,
        required=True,
        help="GPUs of the job: the last visible one serves, the others run CMD",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address the health check connects to")
    parser.add_argument(
        "--server-args",
        default="{}",
        help="JSON mapping of extra `trl vllm-serve` options, e.g. "
        '\'{"gpu_memory_utilization": 0.5, "max_model_len": 2048}\'',
    )
    parser.add_argument(
        "--server-log",
        default=None,
        help="file for the server's output (default: this process's stderr)",
    )
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for GET /health to answer 200 (default 900)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds the training command's processes get between SIGTERM (their checkpoint "
        "save) and SIGKILL (default: torchrun's shutdown timeout + 60 = %(default).0f)",
    )
    parser.add_argument(
        "--server-grace",
        type=float,
        default=DEFAULT_SERVER_GRACE_S,
        help="seconds the server gets between SIGINT and SIGKILL (default %(default).0f)",
    )
    parser.add_argument(
        "--server-command",
        default=None,
        help="JSON list replacing `trl vllm-serve` (tests use a stand-in server); "
        "--model, --port and the server args are appended",
    )
    args = parser.parse_args(argv_opts)
    if not command:
        parser.error("no training command: put it after `--`")
    try:
        options = json.loads(args.server_args)
    except json.JSONDecodeError as err:
        parser.error(f"--server-args: not JSON ({err})")
    if not isinstance(options, dict):
        parser.error("--server-args: must be a JSON mapping")
    base = json.loads(args.server_command) if args.server_command else vllm_serve_command()
    try:
        server = [*base, "--model", args.model, "--port", str(args.port), *server_flags(options)]
        status = run_with_server(
            command,
            server,
            gpus=args.gpus,
            port=args.port,
            host=args.host,
            server_log=args.server_log,
            health_timeout=args.health_timeout,
            grace=args.grace,
            server_grace=args.server_grace,
        )
    except (LaunchError, ServerError) as err:
        sys.exit(f"{prog}: {err}")
    sys.exit(status)
