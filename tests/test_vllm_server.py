"""`python -m aha with-vllm-server` under preemption: the server outlives an outside SIGTERM
until the training command has exited, signals reach whole process trees (ranks in their own
sessions included), and the graces are the training command's and the server's own.

Driven through the CLI against a stand-in server that behaves like vLLM where it matters: it
starts a worker with multiprocessing's spawn (which starts the resource tracker, which
unblocks SIGTERM), answers /health only while that worker lives, and shuts down on SIGTERM or
SIGINT like uvicorn. The training command is a small script with a few behaviours.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aha import vllm_server
from aha.launch import ELASTIC_SHUTDOWN_TIMEOUT_S
from aha.process_tree import descendants
from aha.vllm_server import cli_with_vllm_server, run_with_server
from tests.processes import alive, free_port, wait_until

STANDIN = textwrap.dedent(
    """
    import argparse, http.server, json, multiprocessing as mp, os, signal, subprocess, sys, time


    def work(mode):
        if mode == "stubborn":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(120)


    if __name__ == "__main__":
        parser = argparse.ArgumentParser()
        parser.add_argument("--model")
        parser.add_argument("--port", type=int)
        args, _ = parser.parse_known_args()
        mode = os.environ.get("STANDIN_MODE", "ok")
        path = os.environ["STANDIN_RECORD"]
        worker = mp.get_context("spawn").Process(target=work, args=(mode,))
        worker.start()  # like vLLM's engine: multiprocessing's resource tracker starts too
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        record = {"pid": os.getpid(), "worker": worker.pid, "blocked": signal.SIGTERM in mask}
        if mode == "detached":  # a process of its own session that ignores SIGINT
            record["detached"] = subprocess.Popen(
                [sys.executable, "-c", "import signal, time; "
                 "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"],
                start_new_session=True,
            ).pid

        def stop(signum, frame):  # like uvicorn: a clean shutdown on SIGTERM or SIGINT
            with open(path + ".stopped", "w") as f:
                f.write(signal.Signals(signum).name)
            worker.kill()
            os._exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN if mode == "stubborn" else stop)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)

        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # healthy only while the engine (worker) runs
                ok = self.path == "/health" and worker.is_alive()
                self.send_response(200 if ok else 503)
                self.end_headers()

            def log_message(self, *a):
                pass

        http.server.HTTPServer(("127.0.0.1", args.port), Health).serve_forever()
    """
)

TRAINER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time, urllib.request
    out, action, port, step_s, grandchild_py = sys.argv[1:6]


    def health():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status
        except Exception as err:
            return repr(err)


    def touch(path):
        open(path, "w").close()


    stop = []
    if action == "save":
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    record = {"pid": os.getpid(), "health": health()}
    if action in ("tree", "leftover"):  # a rank in its own session, as torchrun starts them
        behaviour = "stay" if action == "tree" else "exit"
        gc = subprocess.Popen([sys.executable, grandchild_py, out + ".gc", behaviour],
                              start_new_session=True)
        record["grandchild"] = gc.pid
        while not os.path.exists(out + ".gc.ready"):
            time.sleep(0.02)
    with open(out + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(out + ".tmp", out)
    if action == "ok":
        sys.exit(0)
    if action == "leftover":
        sys.exit(0)  # leaves its grandchild running
    touch(out + ".started")
    if action == "save":
        while not stop:
            time.sleep(0.02)
        time.sleep(float(step_s))  # the step still runs; then the save needs the server
        with open(out + ".save", "w") as f:
            json.dump({"health": health(), "signals": len(stop)}, f)
        sys.exit(143)
    time.sleep(60)  # "tree": SIGTERM's default action ends it
    """
)

GRANDCHILD = textwrap.dedent(
    """
    import signal, sys, time
    out, behaviour = sys.argv[1], sys.argv[2]


    def on_term(signum, frame):
        open(out + ".term", "w").close()
        if behaviour == "exit":
            sys.exit(0)


    signal.signal(signal.SIGTERM, on_term)
    open(out + ".ready", "w").close()
    end = time.monotonic() + 120
    while time.monotonic() < end:
        time.sleep(0.05)
    """
)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def harness(tmp_path: Path):
    """Starts the wrapper around the stand-ins; kills whatever of theirs is left afterwards."""
    for name, text in [("standin", STANDIN), ("trainer", TRAINER), ("grandchild", GRANDCHILD)]:
        (tmp_path / f"{name}.py").write_text(text)
    port = free_port()
    wrappers: list[subprocess.Popen] = []

    def start(
        action: str,
        *,
        mode: str = "ok",
        grace: float = 5.0,
        server_grace: float = 2.0,
        step_s: float = 0.0,
    ) -> subprocess.Popen:
        cmd = [
            sys.executable, "-c",
            "import sys; from aha.vllm_server import cli_with_vllm_server as c; "
            "c(sys.argv[1:], 'with-vllm-server')",
            "--model", "Org/Model", "--gpus", "2", "--port", str(port),
            "--server-command", json.dumps([sys.executable, str(tmp_path / "standin.py")]),
            "--grace", str(grace), "--server-grace", str(server_grace),
            "--health-timeout", "30",
            "--", sys.executable, str(tmp_path / "trainer.py"), str(tmp_path / "trainer.json"),
            action, str(port), str(step_s), str(tmp_path / "grandchild.py"),
        ]  # fmt: skip
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "STANDIN_MODE": mode,
               "STANDIN_RECORD": str(tmp_path / "server.json")}  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        wrappers.append(proc)
        return proc

    def run(action: str, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
        begin = time.monotonic()
        proc = start(action, **kwargs)
        _, stderr = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, None, stderr)
        return done, time.monotonic() - begin

    def started() -> bool:
        return (tmp_path / "trainer.json.started").exists()

    ns = SimpleNamespace(
        tmp=tmp_path,
        start=start,
        run=run,
        started=started,
        server=lambda: read_json(tmp_path / "server.json"),
        trainer=lambda: read_json(tmp_path / "trainer.json"),
        stopped_by=lambda: (tmp_path / "server.json.stopped").read_text(),
    )
    yield ns
    for proc in wrappers:
        if proc.poll() is None:
            proc.kill()
    pids = [ns.server().get(k) for k in ("pid", "worker", "detached")]
    pids += [ns.trainer().get(k) for k in ("pid", "grandchild")]
    for pid in pids:
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for proc in wrappers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)  # a leftover may hold the stderr pipe


def assert_gone(*pids: int, timeout: float = 5.0) -> None:
    for pid in pids:
        assert wait_until(lambda pid=pid: not alive(pid), timeout), f"process {pid} still running"


# --- 1. preemption: the server outlives an outside SIGTERM until training has exited -------


def test_preempted_trainer_saves_through_the_server_which_then_stops_cleanly(harness):
    """SIGTERM to every process of the job, as SLURM sends it: the trainer finishes its step
    and saves through the server (1.5 s, longer than --server-grace); only then is the server
    stopped, with SIGINT. Further signals to the wrapper do not cut this short."""
    wrapper = harness.start("save", grace=20, server_grace=0.5, step_s=1.5)
    try:
        assert wait_until(harness.started, 30), "training command never started"
        everyone = {wrapper.pid, *descendants(wrapper.pid)}
        server = harness.server()
        assert {server["pid"], server["worker"], harness.trainer()["pid"]} <= everyone
        for pid in everyone:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        wrapper.send_signal(signal.SIGINT)  # a second signal: ignored, the save goes on
        wrapper.send_signal(signal.SIGTERM)
        _, stderr = wrapper.communicate(timeout=30)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    save = read_json(harness.tmp / "trainer.json.save")
    assert save.get("health") == 200, f"the server was gone before the save: {save}\n{stderr}"
    assert wrapper.returncode == 143, stderr  # the command's own status
    assert "forwarding it to the training command" in stderr
    assert server["blocked"]  # even after multiprocessing's resource tracker started
    assert harness.stopped_by() == "SIGINT"  # a clean shutdown, once training was over
    assert_gone(server["pid"], server["worker"])


def test_server_runs_with_sigterm_blocked_and_is_stopped_with_sigint(harness):
    done, _ = harness.run("ok")
    assert done.returncode == 0, done.stderr
    assert harness.trainer()["health"] == 200
    assert harness.server()["blocked"]
    assert "SIGTERM unblocked" not in done.stderr
    assert harness.stopped_by() == "SIGINT"
    assert_gone(harness.server()["pid"], harness.server()["worker"])


def test_sigterm_guard_survives_multiprocessing_spawn(tmp_path):
    """The mask alone is not enough: starting a spawn process (or SharedMemory) runs
    multiprocessing's resource tracker, which unblocks SIGTERM in its caller. The guard on
    the server's PYTHONPATH keeps it blocked there and in the spawned process."""
    script = tmp_path / "spawner.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing as mp, signal

            def blocked():
                return signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])

            def child(queue):
                queue.put(blocked())

            if __name__ == "__main__":
                ctx = mp.get_context("spawn")
                queue = ctx.Queue()
                proc = ctx.Process(target=child, args=(queue,))
                proc.start()
                print(blocked(), queue.get())
                proc.join()
            """
        )
    )

    def block() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def masks(env: dict) -> str:
        cmd = [sys.executable, str(script)]
        out = subprocess.run(cmd, env=env, preexec_fn=block, capture_output=True, text=True)
        return out.stdout.strip()

    assert masks(dict(os.environ)) == "False False"  # what the guard is for
    guarded = vllm_server._guarded_env(str(tmp_path), dict(os.environ))
    assert masks(guarded) == "True True"


def test_a_killed_wrapper_takes_the_server_and_the_command_with_it(harness):
    """SIGKILL leaves no cleanup: the death signals do it. The server's cannot be the blocked
    SIGTERM; SIGINT makes it shut down and stop its worker."""
    wrapper = harness.start("save")
    try:
        assert wait_until(harness.started, 30), "training command never started"
        wrapper.kill()
        wrapper.communicate(timeout=10)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    server = harness.server()
    assert_gone(server["pid"], server["worker"], harness.trainer()["pid"], timeout=10)
    assert harness.stopped_by() == "SIGINT"


# --- 2. whole process trees ---------------------------------------------------------------


def test_sigterm_reaches_a_rank_in_its_own_session_and_no_process_is_left(harness):
    """The rank records SIGTERM and keeps running, its parent dies of it: the orphaned rank
    is still found (the wrapper adopts it) and killed after --grace."""
    wrapper = harness.start("tree", grace=1.0, server_grace=1.0)
    try:
        assert wait_until(harness.started, 30), "training command never started"
        begin = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        _, stderr = wrapper.communicate(timeout=30)
        took = time.monotonic() - begin
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert (harness.tmp / "trainer.json.gc.term").exists(), f"rank got no SIGTERM\n{stderr}"
    assert wrapper.returncode == 143, stderr  # the command died of the forwarded SIGTERM
    assert took < 10
    trainer, server = harness.trainer(), harness.server()
    assert_gone(trainer["grandchild"], trainer["pid"], server["pid"], server["worker"], timeout=1)


def test_leftovers_of_a_finished_command_are_stopped(harness):
    done, _ = harness.run("leftover")
    assert done.returncode == 0, done.stderr
    assert "leftover process(es) of the training command" in done.stderr
    assert (harness.tmp / "trainer.json.gc.term").exists()  # SIGTERM first, not SIGKILL
    assert_gone(harness.trainer()["grandchild"], timeout=1)


def test_server_processes_outside_its_group_are_stopped(harness):
    """A server process in its own session that ignores SIGINT (and has SIGTERM blocked)
    is killed after --server-grace."""
    done, took = harness.run("ok", mode="detached", server_grace=0.5)
    assert done.returncode == 0, done.stderr
    server = harness.server()
    assert_gone(server["detached"], server["pid"], server["worker"], timeout=1)
    assert took < 20


# --- 3. graces ----------------------------------------------------------------------------


def test_server_ignoring_sigint_is_killed_after_the_server_grace_not_the_grace(harness):
    done, took = harness.run("ok", mode="stubborn", grace=60, server_grace=0.5)
    assert done.returncode == 0, done.stderr
    assert took < 20  # not the 60 s training grace
    assert_gone(harness.server()["pid"], harness.server()["worker"], timeout=1)


def test_grace_defaults_follow_torchruns_shutdown_timeout(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(vllm_server, "run_with_server", lambda *a, **kw: calls.append(kw) or 0)
    base = ["--model", "M", "--gpus", "2"]
    for argv in (base, [*base, "--grace", "7", "--server-grace", "3"]):
        with pytest.raises(SystemExit) as exc:
            cli_with_vllm_server([*argv, "--", "true"], "with-vllm-server")
        assert exc.value.code == 0
    assert (calls[0]["grace"], calls[0]["server_grace"]) == (ELASTIC_SHUTDOWN_TIMEOUT_S + 60, 30)
    assert (calls[1]["grace"], calls[1]["server_grace"]) == (7, 3)
    defaults = inspect.signature(run_with_server).parameters
    assert defaults["grace"].default == ELASTIC_SHUTDOWN_TIMEOUT_S + 60
    assert defaults["server_grace"].default == 30


def test_launch_does_not_import_the_wrapper():
    code = "import sys, aha.launch; print('aha.vllm_server' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_health_check_goes_direct_whatever_http_proxy_says(tmp_path):
    """A cluster's http_proxy without no_proxy would send the 127.0.0.1 check to the proxy."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/health"
        code = f"from aha.vllm_server import healthy; print(healthy({url!r}))"
        dead_proxy = "http://127.0.0.1:9"  # nothing listens there
        env = {**os.environ, "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "no_proxy": ""}
        env.pop("NO_PROXY", None)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "True"
    finally:
        server.shutdown()
