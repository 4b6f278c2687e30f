"""Stop signals of a training process: SIGTERM or SIGINT asks for a save at the end of the step.

SLURM preemption (`--signal=TERM@300`) or a killed snakemake: the step callback in `aha.stages.train`
turns the request into "save and stop", and the process exits non-zero so its rerun resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

log = logging.getLogger("aha.stages.train")


def block_stop_signals() -> None:
    """Block SIGTERM and SIGINT in this thread and so in every thread it starts afterwards.

    Called first thing in a training process: a signal then interrupts no thread's system call
    (a gloo or HTTP wait in C code could fail on EINTR mid-collective and lose the checkpoint
    the signal asks for); StopRequest's watcher thread takes it with sigwait instead.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, StopRequest.SIGNALS)


class StopRequest:
    """SIGTERM/SIGINT -> a flag the step callback turns into "save and stop"; again -> die now.

    A repeat within `debounce_s` counts as the same request: under SLURM each torchrun worker
    gets SIGTERM from both the job step and its launcher within a fraction of a second, and
    dying on the second copy would lose the checkpoint the first one asked for. Where the
    signals are blocked (`block_stop_signals`) a watcher thread waits for them; the handler
    covers a thread that has them unblocked.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, debounce_s: float = 5.0) -> None:
        self.signum: int | None = None
        self.debounce_s = debounce_s
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._closing = False

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        if self._watcher is None and set(self.SIGNALS) <= blocked:
            self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
            self._watcher.start()  # inherits the mask: sigwait needs the signals blocked

    def uninstall(self) -> None:
        """Restore the handlers and end the watcher; the signals stay blocked, so a late one
        waits while the process writes its log and exits (the launcher's grace covers it)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._watcher is not None:
            self._closing = True
            signal.pthread_kill(self._watcher.ident, self.SIGNALS[0])
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch(self) -> None:
        while True:
            signum = signal.sigwait(self.SIGNALS)
            if self._closing:
                return
            self._request(signum, main_thread=False)

    def _handle(self, signum: int, frame: Any) -> None:
        self._request(signum, main_thread=True)

    def _request(self, signum: int, *, main_thread: bool) -> None:
        with self._lock:
            if self.signum is not None:
                if time.monotonic() - self._first_at < self.debounce_s:
                    return  # the same stop request delivered twice (launcher + job step)
                log.warning("%s again: stopping now", signal.Signals(signum).name)
                if not main_thread:
                    os._exit(128 + signum)
                signal.signal(signum, signal.SIG_DFL)  # a later one: stop waiting for the step
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
                os.kill(os.getpid(), signum)
                return
            self.signum = signum
            self._first_at = time.monotonic()
        log.warning(
            "%s received: saving a checkpoint at the end of this step, then stopping",
            signal.Signals(signum).name,
        )
