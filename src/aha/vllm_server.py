"""`python -m aha with-vllm-server`: run a training command beside a `trl vllm-serve` server.

The wrapper owns the server's whole life: it starts the server in its own process group on the
last visible GPU, waits for `GET /health` (failing fast if the server dies), runs the training
command on the other GPUs, and always stops the server (SIGTERM to its group, then SIGKILL after
a grace period): on success, on failure, and when the wrapper itself gets SIGTERM or SIGINT,
which it first forwards to the training command so the trainer can stop cleanly. A GPU held by
an orphaned server is the failure this exists to prevent. `aha.launch.train_command` builds the
argv that calls it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aha.launch import DEFAULT_PORT, LaunchError


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


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when the wrapper dies, even by SIGKILL.

    Linux only (prctl PR_SET_PDEATHSIG); libc is loaded here, in the parent, so the child
    runs only the prctl call between fork and exec.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ServerError(RuntimeError):
    """The vLLM server did not come up (or went away); the message says where its log is."""


class _Signalled(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_process_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the process's group, SIGKILL after `grace` seconds; reaps the process."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray children of an exited leader
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their leader


def _exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


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
    grace: float = 30.0,
    poll: float = 0.5,
) -> int:
    """Start the server, wait for health, run `command`, always stop the server; the status.

    Returns `command`'s exit status (128 + N if it died of signal N). Raises ServerError if the
    server dies or stays unhealthy before `command` starts; a signal to this process is
    forwarded to `command` and ends the run with status 128 + N.
    """
    train_devices, server_device = split_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if _port_in_use(host, port):
        raise ServerError(
            f"port {port} is already in use; set grpo.vllm_server_port (and so --port) to a free one"
        )
    state = {"signalled": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        if state["signalled"]:
            return  # already shutting down: a second Ctrl-C must not abort the cleanup
        state["signalled"] = signum
        raise _Signalled(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    log_file = None
    server = child = None
    try:
        if server_log:
            Path(server_log).parent.mkdir(parents=True, exist_ok=True)
            log_file = open(server_log, "ab")  # noqa: SIM115 - closed in finally
            _log(f"vLLM server log: {server_log}")
        _log(
            f"server on GPU {server_device}, training on GPU(s) {train_devices}: "
            f"{' '.join(server_command)}"
        )
        server = subprocess.Popen(
            list(server_command),
            env={**os.environ, "CUDA_VISIBLE_DEVICES": server_device},
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent(),
        )
        url = f"http://{host}:{port}/health"
        deadline = time.monotonic() + health_timeout
        while not healthy(url):
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
        _log(f"server healthy at {url}; starting: {' '.join(command)}")
        child = subprocess.Popen(
            list(command),
            env={**os.environ, "CUDA_VISIBLE_DEVICES": train_devices},
            start_new_session=True,  # signals reach every rank via the group, sent by us
            preexec_fn=_die_with_parent(),
        )
        while child.poll() is None:
            if server.poll() is not None:
                _log(
                    f"vLLM server exited with status {_exit_status(server.returncode)} during "
                    "training; stopping the training command"
                )
                stop_process_group(child, grace)
                return _exit_status(child.returncode) or 1
            time.sleep(poll)
        status = _exit_status(child.returncode)
        _log(f"training command exited with status {status}")
        return status
    except _Signalled as sig:
        name = signal.Signals(sig.signum).name
        if child is not None and child.poll() is None:
            _log(f"got {name}: forwarding it to the training command (grace {grace:.0f} s)")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, sig.signum)
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                stop_process_group(child, 0)
            return _exit_status(child.returncode) or 128 + sig.signum
        _log(f"got {name} before training started")
        return 128 + sig.signum
    finally:
        if child is not None and child.poll() is None:
            stop_process_group(child, grace)
        if server is not None:
            _log("stopping the vLLM server")
            stop_process_group(server, grace)
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
        default=30.0,
        help="seconds between SIGTERM and SIGKILL when stopping a process (default 30)",
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
        )
    except (LaunchError, ServerError) as err:
        sys.exit(f"{prog}: {err}")
    sys.exit(status)
