"""Processes and their whole trees: find, signal and stop every descendant of a process.

A training command under torchrun puts each rank in its own session, so signalling a process
group misses them, and a rank whose launcher died first is re-parented away from the tree. The
functions here walk /proc instead (Linux), and `Family` makes the caller a child subreaper so
such orphans stay in its tree. Used by `aha.launch.vllm_server` (and its tests) to stop everything a
run started, and nothing else; `preexec` and `guarded_env` keep SIGTERM blocked in a tree that
must outlive a preemption signal.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, NamedTuple

KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the tree to disappear before moving on
# Put on a process's PYTHONPATH as sitecustomize.py by `guarded_env`, so it runs in every Python
# process of that tree (spawned ones too): multiprocessing's resource tracker, which vLLM starts
# (spawn, SharedMemory), unblocks SIGINT and SIGTERM in the process that starts it, undoing the
# mask that `preexec(..., block_sigterm=True)` set.
SIGTERM_GUARD = '''\
"""Written by aha.launch.process_tree: SIGTERM stays blocked in this process tree (the vLLM server)."""
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
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux), loaded in the parent so a preexec_fn only calls it."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def preexec(death_signal: int, *, block_sigterm: bool) -> Callable[[], None]:
    """A preexec_fn: set the signal mask, and send `death_signal` to the child if the wrapper
    dies (PR_SET_PDEATHSIG: even by SIGKILL, which no cleanup code survives).

    The server (`block_sigterm`) must not take SIGTERM as its death signal: it would stay
    pending. It gets SIGINT instead: its clean shutdown also stops its engine and worker
    processes, which the death signal (sent to the direct child only) would never reach, as
    SIGKILL would leave them holding the GPU. The training command unblocks SIGTERM in case
    the wrapper itself inherited it blocked: its ranks must see SIGTERM to save.
    """
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:
        how = signal.SIG_BLOCK if block_sigterm else signal.SIG_UNBLOCK
        signal.pthread_sigmask(how, {signal.SIGTERM})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(death_signal))
            if os.getppid() != parent:  # the wrapper died before prctl: nobody will stop us
                os._exit(128 + death_signal)

    return preexec


def guarded_env(directory: str, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with SIGTERM_GUARD first on PYTHONPATH (written to `directory`)."""
    with open(os.path.join(directory, "sitecustomize.py"), "w") as guard:
        guard.write(SIGTERM_GUARD)
    path = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": os.pathsep.join([directory, *([path] if path else [])])}


class Proc(NamedTuple):
    """A process as /proc/<pid>/stat describes it."""

    ppid: int
    group: int
    session: int
    exited: bool  # a zombie waiting to be reaped: signals no longer matter to it


def process_table() -> dict[int, Proc]:
    """Every process in /proc (Linux; empty elsewhere), by pid."""
    table: dict[int, Proc] = {}
    with suppress(FileNotFoundError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    data = stat.read()
                # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses
                state, ppid, group, session = data[data.rindex(b")") + 2 :].split()[:4]
            except (OSError, ValueError):
                continue  # gone since listdir
            table[int(name)] = Proc(int(ppid), int(group), int(session), state in (b"Z", b"X"))
    return table


def descendants(pid: int, table: Mapping[int, Proc] | None = None) -> set[int]:
    """Every process below `pid` (children, their children, ...), from `process_table()`."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for child, proc in table.items():
        children.setdefault(proc.ppid, []).append(child)
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def sigterm_blocked(pid: int) -> bool | None:
    """Whether `pid` has SIGTERM blocked (SigBlk in /proc/<pid>/status); None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigBlk:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def signal_processes(members: Mapping[int, int], signum: int) -> None:
    """`signum` to each process (pid -> process group) and to each of their groups.

    Groups catch members a /proc walk could miss; this process's own group is never signalled.
    """
    own = os.getpgid(0)
    for pid in members:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    for group in set(members.values()) - {own, 0}:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)


def stop_tree(
    members: Callable[[], Mapping[int, int]],
    signum: int,
    grace: float,
    *,
    poll: float = 0.05,
    max_poll: float = 1.0,
) -> set[int]:
    """`signum` to every current member, SIGKILL to every member still there after `grace` s.

    `members()` lists the live processes (pid -> process group) each time it is called; the
    wait ends as soon as it is empty. Processes that appear after the first signal are not sent
    `signum` (a rank may start a helper to write its checkpoint) but are killed after `grace`.
    Returns what is left KILL_WAIT_S after SIGKILL (processes stuck in uninterruptible I/O).
    Polls every `poll` s at first, backing off to `max_poll` (each poll reads all of /proc).
    """
    live = members()
    if not live:
        return set()
    signal_processes(live, signum)
    deadline = time.monotonic() + grace
    pause = poll
    while live and time.monotonic() < deadline:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(max_poll, pause * 1.5)
        live = members()
    deadline = time.monotonic() + KILL_WAIT_S
    while live:
        signal_processes(live, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(poll)
        live = members()
    return set(live)


class Family:
    """The processes this run starts, and all theirs: kept findable even when orphaned.

    As a child subreaper (Linux) this process inherits the orphans of its descendants, e.g. a
    rank whose torchrun died first, instead of init: they stay in its /proc tree, and it reaps
    them. Children this process already had are someone else's and are left alone.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.started: list[subprocess.Popen] = []
        self._prctl = _prctl()
        self._was_subreaper: int | None = None
        if self._prctl is not None:
            flag = ctypes.c_int(0)
            if self._prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag)) == 0:
                self._was_subreaper = flag.value
                self._prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1))
        self.foreign = {pid for pid, proc in process_table().items() if proc.ppid == self.pid}

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv), **kwargs)
        self.started.append(proc)
        return proc

    def members(self, exclude: subprocess.Popen | None = None) -> dict[int, int]:
        """Live members (pid -> process group), less `exclude`'s tree while it runs.

        `exclude` (started with its own session) also keeps the processes of its session that
        were orphaned and adopted here. Reaps adopted orphans that have exited.
        """
        table = process_table()
        skip = set(self.foreign)
        for pid in self.foreign:
            skip |= descendants(pid, table)
        if exclude is not None and exclude.poll() is None:
            skip |= {exclude.pid} | descendants(exclude.pid, table)
            skip |= {pid for pid, proc in table.items() if proc.session == exclude.pid}
        own = {proc.pid for proc in self.started}
        live: dict[int, int] = {}
        for pid in descendants(self.pid, table) - skip:
            proc = table[pid]
            if not proc.exited:
                live[pid] = proc.group
            elif proc.ppid == self.pid and pid not in own:
                with suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        for proc in self.started:  # without /proc, at least the processes started here
            if proc is not exclude and proc.pid not in live and proc.poll() is None:
                live[proc.pid] = proc.pid  # start_new_session: its own group
        return live

    def close(self) -> None:
        """Stop being a subreaper (if this process was not one before)."""
        if self._prctl is not None and self._was_subreaper == 0:
            self._prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(0))
