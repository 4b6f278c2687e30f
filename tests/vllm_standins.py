"""Stand-ins for `python -m aha with-vllm-server`'s tests (tests/unit/test_vllm_server.py): scripts
that behave like vLLM's server, another job's server on the same port, and a training command.

- STANDIN: like `vllm serve MODEL --host H --port P`: binds first (SO_REUSEPORT with
  STANDIN_REUSEPORT, as vLLM's API servers), starts a worker with multiprocessing's spawn
  (which starts the resource tracker, which unblocks SIGTERM), records itself in
  $STANDIN_RECORD, waits for $STANDIN_GO if set (a model load), answers /health only while
  its worker lives, and shuts down on SIGTERM or SIGINT like uvicorn ($STANDIN_MODE varies it).
- NEIGHBOUR PORT READY: another job's server on PORT with SO_REUSEPORT, answering 200.
- TRAINER OUT ACTION STEP_S GRANDCHILD: reaches the server at $AHA_VLLM_SERVER_URL through the
  environment's proxy settings and records what it saw; ACTION ok, save, tree or leftover.
- GRANDCHILD OUT BEHAVIOUR: a rank in its own session that records SIGTERM.
"""

from __future__ import annotations

import textwrap

STANDIN = textwrap.dedent(
    """
    import argparse, http.server, json, multiprocessing as mp, os, signal, subprocess, sys, time


    def work(mode):
        if mode == "stubborn":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(120)


    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # healthy only while the engine (worker) runs
            ok = self.path == "/health" and worker.is_alive()
            self.send_response(200 if ok else 503)
            self.end_headers()

        def log_message(self, *a):
            pass


    class Server(http.server.HTTPServer):
        allow_reuse_port = bool(os.environ.get("STANDIN_REUSEPORT"))  # as vLLM's API servers


    if __name__ == "__main__":
        parser = argparse.ArgumentParser()
        parser.add_argument("model")  # `vllm serve MODEL`
        parser.add_argument("--host")
        parser.add_argument("--port", type=int)
        args, _ = parser.parse_known_args()
        mode = os.environ.get("STANDIN_MODE", "ok")
        path = os.environ["STANDIN_RECORD"]
        worker = mp.get_context("spawn").Process(target=work, args=(mode,))
        worker.start()  # like vLLM's engine: multiprocessing's resource tracker starts too
        server = Server((args.host, args.port), Health)  # bound before the record, as vLLM
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        record = {"pid": os.getpid(), "worker": worker.pid, "blocked": signal.SIGTERM in mask,
                  "port": args.port, "host": args.host}
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
        go, until = os.environ.get("STANDIN_GO"), time.monotonic() + 60
        while go and not os.path.exists(go):  # a model load: listening, not answering yet
            if time.monotonic() > until:
                sys.exit(f"stand-in server: no {go} after 60 s")
            time.sleep(0.02)
        server.serve_forever()
    """
)

# Another job's server on the same port: SO_REUSEPORT, answers everything with 200.
NEIGHBOUR = textwrap.dedent(
    """
    import http.server, sys

    class Any(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    class Server(http.server.HTTPServer):
        allow_reuse_port = True

    server = Server(("127.0.0.1", int(sys.argv[1])), Any)
    open(sys.argv[2], "w").close()
    server.serve_forever()
    """
)

TRAINER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time, urllib.request
    out, action, step_s, grandchild_py = sys.argv[1:5]
    url = os.environ["AHA_VLLM_SERVER_URL"]  # the port the wrapper chose for this job


    def health():  # through the environment's proxies, as TRL's client (requests) does
        try:
            return urllib.request.urlopen(url + "/health", timeout=5).status
        except Exception as err:
            return repr(err)


    def touch(path):
        open(path, "w").close()


    stop = []
    if action == "save":
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    env = ("AHA_VLLM_SERVER_URL", "AHA_VLLM_GROUP_PORT", "no_proxy", "NO_PROXY")
    record = {"pid": os.getpid(), "health": health(), **{k: os.environ.get(k) for k in env}}
    if action in ("tree", "leftover"):  # a rank in its own session, as torchrun starts them
        behaviour = "stay" if action == "tree" else "exit"
        gc = subprocess.Popen([sys.executable, grandchild_py, out + ".gc", behaviour],
                              start_new_session=True)
        record["grandchild"] = gc.pid
        until = time.monotonic() + 30
        while not os.path.exists(out + ".gc.ready"):
            if time.monotonic() > until:
                sys.exit("stand-in trainer: its rank never got ready (30 s)")
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


DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there
