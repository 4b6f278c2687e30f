"""`python -m aha with-vllm-server`: per-job ports, and preemption.

- Ports: free ones chosen per job unless pinned (a busy pin fails naming its key), handed to
  the trainer, whose no_proxy names 127.0.0.1; a second listener on the server's port (vLLM
  sets SO_REUSEPORT with several API servers) fails the job, before or during training.
- Preemption: the server outlives an outside SIGTERM until the training command has exited,
  signals reach whole process trees (ranks in their own sessions included), and the graces
  are the training command's and the server's own, all derived from one stop budget.

Driven through the CLI against a stand-in server that behaves like vLLM where it matters, and a
small training command with a few behaviours (tests/vllm_standins.py). The stop budget's own
derivation is tests/unit/test_stop_budget.py; the server's command line and the trainer's client
settings are tests/unit/test_vllm_serve.py.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aha.launch import process_tree, vllm_server
from aha.launch.commands import DEFAULT_SIGNAL_LEAD_S, stop_budget
from aha.launch.ports import PortError, PortWatch, reserve_ports
from aha.launch.process_tree import descendants
from aha.launch.vllm_server import cli, local_no_proxy, run_with_server
from aha.run import Run
from tests.processes import alive, free_port, wait_until
from tests.vllm_standins import DEAD_PROXY, GRANDCHILD, NEIGHBOUR, STANDIN, TRAINER


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def harness(tmp_path: Path):
    """Starts the wrapper around the stand-ins; kills whatever of theirs is left afterwards."""
    scripts = [("standin", STANDIN), ("trainer", TRAINER), ("grandchild", GRANDCHILD),
               ("neighbour", NEIGHBOUR)]  # fmt: skip
    for name, text in scripts:
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
        pinned: bool = True,
        reuse_port: bool = False,
        go: Path | None = None,
        port_check: float = 10.0,
    ) -> subprocess.Popen:
        cmd = [
            sys.executable, "-c",
            "import sys; from aha.launch.vllm_server import cli as c; "
            "c(sys.argv[1:], 'with-vllm-server')",
            "--model", "Org/Model", "--gpus", "2", *(["--port", str(port)] if pinned else []),
            "--server-command", json.dumps([sys.executable, str(tmp_path / "standin.py")]),
            "--grace", str(grace), "--server-grace", str(server_grace),
            "--health-timeout", "30", "--port-check-interval", str(port_check),
            "--", sys.executable, str(tmp_path / "trainer.py"), str(tmp_path / "trainer.json"),
            action, str(step_s), str(tmp_path / "grandchild.py"),
        ]  # fmt: skip
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "STANDIN_MODE": mode,
               "STANDIN_RECORD": str(tmp_path / "server.json"),
               # a cluster's proxy settings: the trainer must still reach its server directly
               "http_proxy": DEAD_PROXY, "HTTP_PROXY": DEAD_PROXY,
               "no_proxy": "example.org"}  # fmt: skip
        env.pop("NO_PROXY", None)
        if reuse_port:
            env["STANDIN_REUSEPORT"] = "1"
        if go is not None:
            env["STANDIN_GO"] = str(go)
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

    neighbours: list[subprocess.Popen] = []

    def neighbour(on_port: int) -> subprocess.Popen:
        """Another job's server on `on_port` (SO_REUSEPORT), outside the wrapper's tree."""
        ready = tmp_path / f"neighbour-{len(neighbours)}.ready"
        script = str(tmp_path / "neighbour.py")
        proc = subprocess.Popen([sys.executable, script, str(on_port), str(ready)])
        neighbours.append(proc)
        assert wait_until(ready.exists, 10), "neighbour server never listened"
        return proc

    ns = SimpleNamespace(
        tmp=tmp_path,
        port=port,
        neighbour=neighbour,
        start=start,
        run=run,
        started=started,
        server=lambda: read_json(tmp_path / "server.json"),
        trainer=lambda: read_json(tmp_path / "trainer.json"),
        stopped_by=lambda: (tmp_path / "server.json.stopped").read_text(),
    )
    yield ns
    for proc in wrappers + neighbours:
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
    guarded = process_tree.guarded_env(str(tmp_path), dict(os.environ))
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


def test_grace_defaults_are_the_default_stop_budgets(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(vllm_server, "run_with_server", lambda *a, **kw: calls.append(kw) or 0)
    base = ["--model", "M", "--gpus", "2"]
    for argv in (base, [*base, "--grace", "7", "--server-grace", "3"]):
        with pytest.raises(SystemExit) as exc:
            cli([*argv, "--", "true"], "with-vllm-server")
        assert exc.value.code == 0
    server_run = {"mode": "zero3", "grpo": {"use_vllm": True, "vllm_mode": "server"}}
    config = {"device": "cuda", "model": {"source": "hub", "name_or_path": "M"}}
    budget = stop_budget(Run.build({**config, "runs": {"r": server_run}}, "r"))  # default lead
    assert budget.lead_s == DEFAULT_SIGNAL_LEAD_S == 300
    assert (
        (calls[0]["grace"], calls[0]["server_grace"]) == (budget.wrapper_grace_s, 30) == (255, 30)
    )
    assert (calls[1]["grace"], calls[1]["server_grace"]) == (7, 3)
    defaults = inspect.signature(run_with_server).parameters
    assert defaults["grace"].default == budget.wrapper_grace_s
    assert defaults["server_grace"].default == 30


def test_launch_does_not_import_the_wrapper():
    code = "import sys, aha.launch.commands; print('aha.launch.vllm_server' in sys.modules)"
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
        code = f"from aha.launch.vllm_server import healthy; print(healthy({url!r}))"
        dead_proxy = "http://127.0.0.1:9"  # nothing listens there
        env = {**os.environ, "http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "no_proxy": ""}
        env.pop("NO_PROXY", None)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "True"
    finally:
        server.shutdown()


# --- 4. ports per job ---------------------------------------------------------------------


def test_free_ports_are_chosen_distinct_and_pins_kept():
    pinned = free_port()
    ports = reserve_ports(
        {"grpo.vllm_server_port": None, "grpo.vllm_group_port": None, "x": pinned}
    )
    assert ports["x"] == pinned
    assert len(set(ports.values())) == 3 and all(p > 0 for p in ports.values())


def test_a_busy_pinned_port_is_an_error_naming_its_key():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortError, match=rf"^grpo\.vllm_group_port: port {port} is already in"):
            reserve_ports({"grpo.vllm_server_port": None, "grpo.vllm_group_port": port})


def test_unpinned_ports_are_chosen_and_reach_the_trainer_which_bypasses_the_proxy(harness):
    """No port in the config: the wrapper picks the server's and the weight-sync group's, the
    server listens on 127.0.0.1 there, and the trainer gets both, with a no_proxy that keeps
    the cluster's entries and adds 127.0.0.1: its request through the environment's (dead)
    http_proxy settings reaches the server."""
    done, _ = harness.run("ok", pinned=False)
    assert done.returncode == 0, done.stderr
    server, trainer = harness.server(), harness.trainer()
    url = f"http://127.0.0.1:{server['port']}"
    assert server["host"] == "127.0.0.1" and trainer["AHA_VLLM_SERVER_URL"] == url
    group = int(trainer["AHA_VLLM_GROUP_PORT"])
    assert group not in (server["port"], 0)
    assert f"ports: server {url}, weight-sync group {group}" in done.stderr
    assert trainer["health"] == 200, trainer  # not the proxy's connection refused
    assert trainer["no_proxy"] == trainer["NO_PROXY"] == "example.org,127.0.0.1,localhost"


def test_local_no_proxy_appends_to_both_spellings():
    assert local_no_proxy({}) == {
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    merged = local_no_proxy({"NO_PROXY": "a.org, localhost", "no_proxy": "b.org"})
    assert merged["no_proxy"] == merged["NO_PROXY"] == "b.org,a.org,localhost,127.0.0.1"


def test_port_watch_names_a_second_listener_on_the_servers_port(harness):
    """Two servers on one port with SO_REUSEPORT (as vLLM binds with several API servers):
    the kernel splits the connections. Only the server's own process tree may listen."""
    port = free_port()
    ours = harness.neighbour(port)
    watch = PortWatch(ours.pid, "127.0.0.1", port, "HINT")
    assert watch.problem() is None
    theirs = harness.neighbour(port)
    problem = watch.problem()
    assert problem and f"pid {theirs.pid}" in problem and "also listen" in problem
    assert problem.endswith("HINT")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as idle:
        alone = PortWatch(idle.pid, "127.0.0.1", port, "HINT").problem()  # owns neither
        idle.kill()
    assert alone and "is served by" in alone and "not by this job's vLLM server" in alone


def test_a_second_listener_on_the_port_fails_the_job_before_training(harness):
    """The wrapper's busy check passed, then another job's server bound the same port (it
    was pinned in both): /health answers (either server may), the ownership check does not."""
    go = harness.tmp / "go"
    wrapper = harness.start("ok", reuse_port=True, go=go)
    try:
        assert wait_until(lambda: harness.server().get("pid"), 30), "server never bound"
        other = harness.neighbour(harness.port)
        go.touch()
        _, stderr = wrapper.communicate(timeout=30)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode == 1, stderr
    assert f"pid {other.pid}" in stderr and "also listen(s) on 127.0.0.1" in stderr
    assert f"beside this job's vLLM server (pid {harness.server()['pid']})" in stderr
    assert "remove grpo.vllm_server_port" in stderr  # the port was pinned
    assert not harness.started() and not harness.trainer(), "training ran against two servers"
    assert_gone(harness.server()["pid"], harness.server()["worker"])


def test_a_listener_appearing_during_training_stops_it(harness):
    wrapper = harness.start("tree", reuse_port=True, pinned=False, grace=2, port_check=0.2)
    try:
        assert wait_until(harness.started, 30), "training command never started"
        harness.neighbour(harness.server()["port"])
        _, stderr = wrapper.communicate(timeout=30)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    assert wrapper.returncode != 0, stderr
    assert "error during training: " in stderr and "stopping the training command" in stderr
    assert "rerun the job: it chooses other free ports" in stderr
    assert (harness.tmp / "trainer.json.gc.term").exists()  # SIGTERM: its ranks save first
    assert_gone(harness.trainer()["pid"], harness.server()["pid"])
