"""Fail fast when a call from the trainer to the vLLM server hangs, instead of holding the GPUs.

A zero3 server-mode run pushes the policy's weights into the `vllm serve` process over NCCL
after every optimizer step: `VLLMClient.init_communicator` joins an NCCL group with the server
once (a TCP-store rendezvous, then `ncclCommInitRank`), `VLLMClient.update_named_params` then
broadcasts every tensor while the server receives them inside an HTTP request, and every other
call is an HTTP request with no timeout. A peer that never answers leaves the training process
blocked in C code (the NCCL init, a CUDA stream synchronize, a socket read) where no Python
exception reaches it: the job would keep its GPUs until the time limit, and again on each retry.

So each of those calls runs under a `deadline`: a watchdog thread armed before the call and
disarmed after it. When a call outlives its bound, `fail_fast` logs an error naming the call,
dumps every thread's stack and ends the process with `EXIT_STATUS`; the launcher then stops the
other ranks, the job fails at once, and its retry resumes from the newest checkpoint.

`deadline` is pure; `install` applies it to TRL's client (imported there, not here).
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlparse

log = logging.getLogger("aha.launch.weight_sync")

# EX_TEMPFAIL (sysexits.h): a temporary failure, worth a retry; distinct from the codes that
# training uses (1 for errors, 130/143 for stop signals, 128 + n for a repeated signal).
EXIT_STATUS = 75
# If reporting the expiry itself blocks (a full stderr pipe, a handler lock held by the stuck
# thread), the process still ends this many seconds later.
REPORT_GRACE_S = 30.0
# The stop signals stay with the training process's sigwait thread (aha.launch.stop_signals).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Describe = Callable[[str, Any], str]
"""(method name, client) -> what the call waits for, as it appears in the error."""


# ----------------------------------------------------------------------------- the watchdog


@contextmanager
def deadline(
    seconds: float,
    what: str | Callable[[], str],
    on_expiry: Callable[[str], object] | None = None,
) -> Iterator[None]:
    """Run the body under a watchdog: `on_expiry(message)` runs if it outlives `seconds`.

    A thread blocked in C code cannot be interrupted, so the watchdog does not try: it runs on
    its own thread, and its default (`fail_fast`) ends the process. `what` may be a callable,
    evaluated only on expiry. A body that finishes (or raises) in time disarms it for good.
    """
    if not seconds > 0:
        raise ValueError(f"deadline: seconds must be > 0 (got {seconds!r})")
    expire = fail_fast if on_expiry is None else on_expiry
    done = threading.Event()

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        if done.wait(seconds):
            return
        try:
            text = what() if callable(what) else what
        except Exception as err:  # the report must not be what stops the exit
            text = f"a bounded call (its description failed: {err!r})"
        expire(f"{text} did not finish within {seconds:g} s")

    threading.Thread(target=watch, name="aha-deadline", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def fail_fast(message: str, *, hint: str = "", status: int = EXIT_STATUS) -> NoReturn:
    """Report `message` on stderr and the log, dump all threads' stacks, `os._exit(status)`.

    `os._exit`, not an exception: the thread that hangs is not this one, and a clean shutdown
    would wait on it (atexit, non-daemon threads) or on collectives with the other ranks.
    """
    backstop = threading.Timer(REPORT_GRACE_S, os._exit, (status,))
    backstop.daemon = True
    backstop.start()
    text = (
        f"{message}; ending this process (exit status {status}) so the launcher stops the other "
        f"ranks and the job's retry resumes from the newest checkpoint{hint}. "
        "The stacks of all threads follow."
    )
    try:
        with suppress(Exception):
            log.critical(text)
        handlers = _handlers(log)
        for handler in handlers:
            with suppress(Exception):
                handler.flush()
        stream = _stderr()
        with suppress(Exception):
            if not any(
                getattr(h, "stream", None) in (sys.stderr, sys.__stderr__) for h in handlers
            ):
                stream.write(f"{text}\n")  # the log goes elsewhere only: say it here too
            stream.flush()
        with suppress(Exception):
            sys.stdout.flush()
        with suppress(Exception):
            faulthandler.dump_traceback(file=stream, all_threads=True)
            stream.flush()
    finally:
        os._exit(status)


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of `logger` reaches (its own, then its ancestors' while it propagates)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found or ([logging.lastResort] if logging.lastResort else [])


def _stderr() -> Any:
    """A stderr with a file descriptor (faulthandler needs one; a captured sys.stderr has none)."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__


# ----------------------------------------------------------------------------- TRL's client

# The VLLMClient methods TRL 1.16 calls from the trainer (trl/generation/vllm_generation.py,
# trl/trainer/grpo_trainer.py), plus update_named_param: method -> (kind, what it waits for).
# `{server}` is the server's host:port, `{group_port}` the weight-sync group's port.
CALLS: dict[str, tuple[str, str]] = {
    "init_communicator": (
        "weight sync",
        "NCCL rendezvous with the vLLM server at {server}, group port {group_port}",
    ),
    "update_named_params": (
        "weight sync",
        "NCCL broadcast of the policy's weights to the vLLM server at {server}, group port "
        "{group_port}, fed by ZeRO-3 gathers with the other training ranks",
    ),
    "update_named_param": (
        "weight sync",
        "NCCL broadcast of one tensor to the vLLM server at {server}, group port {group_port}",
    ),
    "reset_prefix_cache": (
        "weight sync",
        "HTTP POST /reset_prefix_cache to the vLLM server at {server}, after the weight update",
    ),
    "get_server_info": ("vLLM server", "HTTP GET /server_info from the vLLM server at {server}"),
    "generate": ("generation", "HTTP POST /v1/completions to the vLLM server at {server}"),
    "image_features": ("generation", "HTTP image processing by the vLLM server at {server}"),
}
GENERATION_CALLS = frozenset(name for name, (kind, _) in CALLS.items() if kind == "generation")
_MARK = "_aha_deadline"


def describe_call(name: str, client: Any) -> str:
    """What `client.<name>` waits for, with the server's address and the group port."""
    base_url = getattr(client, "base_url", None)
    server = urlparse(base_url).netloc if base_url else "?"
    return CALLS[name][1].format(
        server=server or base_url, group_port=getattr(client, "group_port", "?")
    )


@dataclass(frozen=True)
class _Settings:
    timeout_s: float
    generation_timeout_s: float
    describe: Describe
    hint: str


_settings: _Settings | None = None  # read at call time, so a second install() updates it
_local = threading.local()  # depth of bounded calls on this thread: inner ones ride the outer


def install(
    timeout_s: float,
    describe: Describe = describe_call,
    *,
    generation_timeout_s: float | None = None,
    setting: str | None = None,
) -> list[str]:
    """Bound every `CALLS` method of TRL's `VLLMClient` by a `deadline`; returns their names.

    Generation calls get `generation_timeout_s` (default `timeout_s`), the others `timeout_s`;
    `describe(name, client)` says what a call waits for and `setting` names the option to raise.
    Idempotent (a second call only updates the settings), and it wraps whatever each method is
    now, so call it after anything that replaces one (`aha.launch.cpu_rehearsal`): a replacement
    installed later is unbounded until install() runs again.
    """
    global _settings
    generation = timeout_s if generation_timeout_s is None else generation_timeout_s
    for value in (timeout_s, generation):
        if not value > 0:
            raise ValueError(f"weight_sync.install: timeouts must be > 0 (got {value!r})")
    hint = f"; if the call is merely slow, raise {setting}" if setting else ""
    _settings = _Settings(float(timeout_s), float(generation), describe, hint)

    from trl.generation.vllm_client import VLLMClient

    for name in CALLS:
        current = getattr(VLLMClient, name)
        if not getattr(current, _MARK, False):
            setattr(VLLMClient, name, _bounded(name, current))
    log.info("vLLM client calls bounded: weight sync %g s, generation %g s", timeout_s, generation)
    return list(CALLS)


def _bounded(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` under a deadline; an inner bounded call (update_named_param -> update_named_params,
    init_communicator -> get_server_info) runs under the outer call's deadline only."""

    @functools.wraps(method)  # keeps the replaced function's attributes (`_aha_skipped`)
    def bounded(self: Any, *args: Any, **kwargs: Any) -> Any:
        settings = _settings
        if settings is None or getattr(_local, "depth", 0):
            return method(self, *args, **kwargs)
        seconds = settings.generation_timeout_s if name in GENERATION_CALLS else settings.timeout_s

        def what() -> str:
            return f"{CALLS[name][0]}: VLLMClient.{name} ({settings.describe(name, self)})"

        _local.depth = 1
        try:
            with deadline(seconds, what, functools.partial(fail_fast, hint=settings.hint)):
                return method(self, *args, **kwargs)
        finally:
            _local.depth = 0

    setattr(bounded, _MARK, True)
    return bounded
