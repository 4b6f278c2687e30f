"""GPU modes, tested without a GPU: launch commands, the DeepSpeed config, the vLLM server
wrapper (against a stand-in server process), environment checks and the vLLM sampling glue."""

from __future__ import annotations

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
import yaml

from aha.launch import gpu
from aha.launch.commands import LaunchError, train_command
from aha.launch.vllm_sampler import Completion, lora_rank, to_completions
from aha.launch.vllm_server import split_gpus
from aha.run import Run, batch_notes, build_all
from tests.processes import alive, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
PY = "/env/bin/python"
ARGS = ["--run", "{}", "--data-dir", "d"]
ZERO3 = "/repo/workflow/accelerate/zero3.yaml"  # the rule passes the path of its workflow


def spec(mode: str, gpus: int | None = None, vllm_server: dict | None = None, **grpo) -> Run:
    """Run `r` of mode `mode` on cuda, on `gpus` (default: the mode's), with these grpo keys."""
    run = {"mode": mode, "grpo": {"max_steps": 2, **grpo}}
    if vllm_server:
        run["vllm_server"] = vllm_server
    config = {"model": {"name_or_path": "Org/Model"}, "checkpoints": [2], "runs": {"r": run}}
    return Run.build(config, "r", gpus=gpus)


# --- train_command ------------------------------------------------------------------------


def test_cpu_and_qlora_run_one_plain_process():
    assert train_command(spec("cpu"), ARGS, python=PY) == [PY, "-m", "aha", "train", *ARGS]
    assert train_command(spec("qlora"), ARGS, python=PY) == [PY, "-m", "aha", "train", *ARGS]
    assert train_command(spec("qlora"), ARGS, python=PY) == [PY, "-m", "aha", "train", *ARGS]


def test_qlora_without_a_gpu_is_refused():
    with pytest.raises(LaunchError, match=r"runs\.r: mode qlora needs 1 GPU \(resources gpu=0\)"):
        train_command(spec("qlora", gpus=0), ARGS, python=PY)
    with pytest.raises(LaunchError, match=r"needs 1 GPU \(resources gpu=0\)"):
        train_command(spec("qlora"), ARGS, gpus=0)  # the job's GPUs replace the mode's


def test_zero3_colocate_launches_accelerate_on_every_gpu():
    cmd = train_command(
        spec("zero3", use_vllm=True, vllm_mode="colocate"), ARGS, python=PY, accelerate_config=ZERO3
    )
    assert cmd == [
        # the default 300 s stop budget less torchrun's own exit: every rank saves on SIGTERM
        "env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=285",
        PY, "-m", "accelerate.commands.launch",
        "--config_file", ZERO3,
        "--num_processes", "4",
        "--main_process_port", "0",  # a free rendezvous port per job, not 29500
        "-m", "aha", "train", *ARGS,
    ]  # fmt: skip


def test_zero3_server_trains_on_all_but_the_last_gpu_inside_the_wrapper():
    run = spec(
        "zero3",
        vllm_server={"gpu_memory_utilization": 0.5},
        use_vllm=True,
        vllm_mode="server",
        vllm_server_port=8123,
    )
    cmd = train_command(
        run, ARGS, python=PY, server_log="logs/train/r.vllm-server.log", accelerate_config=ZERO3
    )
    cut = cmd.index("--")
    assert cmd[:cut] == [
        PY, "-m", "aha", "with-vllm-server",
        "--model", "Org/Model", "--gpus", "4", "--port", "8123",  # pinned by the config
        # the default 300 s stop budget less 45 s to stop the server; 30 s of it its own grace
        "--grace", "255", "--server-grace", "30",
        "--server-args", '{"gpu_memory_utilization": 0.5}',
        "--server-log", "logs/train/r.vllm-server.log",
    ]  # fmt: skip
    launch = cmd[cut + 1 :]
    assert launch[launch.index("--num_processes") + 1] == "3"
    # within the wrapper's grace, less 15 s for torchrun's own exit
    assert launch[:2] == ["env", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=240"]
    assert launch[launch.index("--main_process_port") + 1] == "0"
    assert launch[-len(ARGS) - 3 :] == ["-m", "aha", "train", *ARGS]


def test_zero3_server_serves_the_model_it_is_given_and_needs_two_gpus():
    run = spec("zero3", gpus=2, use_vllm=True, vllm_mode="server")
    cmd = train_command(run, [], python=PY, model="results/models/tiny", accelerate_config=ZERO3)
    assert cmd[cmd.index("--model") + 1] == "results/models/tiny"
    # no pinned port: the wrapper chooses free ones when the job starts
    assert "--port" not in cmd and "--group-port" not in cmd
    pinned = spec("zero3", gpus=2, use_vllm=True, vllm_mode="server", vllm_group_port=52000)
    cmd = train_command(pinned, [], python=PY, accelerate_config=ZERO3)
    assert cmd[cmd.index("--group-port") + 1] == "52000" and "--port" not in cmd
    assert "--server-args" not in cmd
    with pytest.raises(LaunchError, match="at least 2 GPUs"):
        train_command(run.on(1), [], python=PY)
    with pytest.raises(LaunchError, match="at least 1 GPU"):
        train_command(spec("zero3", gpus=0), [], python=PY)
    with pytest.raises(LaunchError, match="needs an accelerate config file"):
        train_command(spec("zero3", gpus=1), [], python=PY)  # no default path relative to the cwd


def test_zero3_without_vllm_use_is_plain_accelerate_even_if_mode_says_server():
    # vllm_mode only matters with use_vllm: no server is started for HF generation.
    run = spec("zero3", gpus=2, vllm_mode="server")
    assert not run.uses_vllm_server
    cmd = train_command(run, [], python=PY, accelerate_config=ZERO3)
    assert cmd[2:5] == [PY, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2"


def test_default_devices_per_mode():
    assert [spec(m).devices for m in ("cpu", "qlora", "zero3")] == [0, 1, 4]


def test_seed_config_zero3_run_reproduces_the_seed_batch_on_four_gpus():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    run = Run.build(config, "qwen-zero3")
    cmd = train_command(run, [], accelerate_config=ZERO3)
    processes = int(cmd[cmd.index("--num_processes") + 1])
    assert processes == 3 and cmd[cmd.index("--model") + 1] == "Qwen/Qwen2.5-3B-Instruct"
    grpo = run.grpo
    completions = grpo["per_device_train_batch_size"] * processes
    completions *= grpo["gradient_accumulation_steps"]
    # the seed (TRL 0.14): 3 GPUs x 1 prompt x 8 accumulation = 24 prompts x 8 generations
    assert completions == 192 == 24 * grpo["num_generations"]
    assert (grpo["learning_rate"], grpo["beta"], grpo["temperature"]) == (5e-7, 0.001, 0.9)
    assert grpo["max_completion_length"] == 1024 and grpo["max_steps"] == 450
    assert run.checkpoints == (50, 100, 200, 450)
    assert Run.build(config, "qwen-qlora").quantization["load_in_4bit"] is True
    # the seed (TRL 0.14) had no importance-sampling correction; TRL 1.16 turns it on by default
    assert grpo["vllm_importance_sampling_correction"] is False
    assert run.completions_per_step == 192


def test_switching_the_seed_run_to_colocate_says_its_batch_grows():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert batch_notes(build_all(config).values()) == []  # server mode: the seed's batch
    config["runs"]["qwen-zero3"]["grpo"]["vllm_mode"] = "colocate"
    del config["runs"]["qwen-zero3"]["vllm_server"]  # options of a server it no longer starts
    config["runs"]["qwen-zero3"]["seeds"] = [1, 2]  # one note per run, not per replicate
    (note,) = batch_notes(build_all(config).values())
    assert note.startswith("runs.qwen-zero3: vllm_mode colocate trains on all 4 devices: 256")
    assert "server mode on the same devices gives 192" in note


# --- GPU split (the vllm serve command: tests/unit/test_vllm_serve.py) ------------------------


def test_split_gpus_gives_the_server_the_last_visible_device():
    assert split_gpus(4, None) == ("0,1,2", "3")
    assert split_gpus(3, "4,5,6") == ("4,5", "6")
    assert split_gpus(2, "4,5,6,7") == ("4", "5")  # only the job's share of the list
    with pytest.raises(LaunchError, match="lists 1"):
        split_gpus(2, "0")
    with pytest.raises(LaunchError, match="at least 2 GPUs"):
        split_gpus(1, None)


# --- accelerate / DeepSpeed config --------------------------------------------------------


def test_zero3_accelerate_config():
    path = ROOT / "workflow" / "accelerate" / "zero3.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["distributed_type"] == "DEEPSPEED" and raw["mixed_precision"] == "bf16"
    assert "num_processes" not in raw  # always from the command line (the rule's resources)
    assert raw["deepspeed_config"] == {
        "zero_stage": 3,
        "zero3_init_flag": True,
        "zero3_save_16bit_model": True,  # stage3_gather_16bit_weights_on_model_save
        "offload_optimizer_device": "none",
        "offload_param_device": "none",
        "deepspeed_multinode_launcher": "standard",
    }
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(path))
    assert loaded.distributed_type == "DEEPSPEED" and loaded.deepspeed_config["zero_stage"] == 3
    assert loaded.num_machines == 1 and not loaded.use_cpu


# --- the server wrapper against a stand-in server -----------------------------------------

STANDIN = textwrap.dedent(
    """
    import argparse, http.server, json, os, signal, subprocess, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("model")  # `vllm serve MODEL`
    parser.add_argument("--port", type=int)
    args, rest = parser.parse_known_args()
    mode = os.environ.get("STANDIN_MODE", "ok")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record = {"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "pid": os.getpid(), "worker": worker.pid,
              "dev_mode": os.environ.get("VLLM_SERVER_DEV_MODE")}
    with open(os.environ["STANDIN_RECORD"], "w") as f:
        json.dump(record, f)
    if mode == "die":
        worker.kill()
        sys.exit(7)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(0.3)  # like a model load: not healthy at once

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and mode != "unhealthy"
            self.send_response(200 if ok else 503)
            self.end_headers()

        def log_message(self, *a):
            pass

    http.server.HTTPServer(("127.0.0.1", args.port), Health).serve_forever()
    """
)

TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time, urllib.request
    out, action = sys.argv[1], sys.argv[2]
    status = urllib.request.urlopen(os.environ["AHA_VLLM_SERVER_URL"] + "/health").status
    record = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "health": status,
              "job_gpus": os.environ.get("AHA_GPU_DEVICES")}
    with open(out, "w") as f:
        json.dump(record, f)
    if action == "fail":
        sys.exit(3)
    if action == "wait":
        def on_term(signum, frame):
            open(out + ".term", "w").close()
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        open(out + ".started", "w").close()
        time.sleep(60)
    """
)


@pytest.fixture
def harness(tmp_path: Path):
    """Builds the wrapper's command line around the stand-in server and the stand-in trainer."""
    (tmp_path / "standin.py").write_text(STANDIN)
    (tmp_path / "trainer.py").write_text(TRAINER)
    port = free_port()

    def command(action: str, *, mode: str = "ok", grace: float = 2.0, timeout: float = 30.0):
        wrapper = [
            sys.executable, "-c",
            "import sys; from aha.launch.vllm_server import cli as c; "
            "c(sys.argv[1:], 'with-vllm-server')",
            "--model", "Org/Model", "--gpus", "3", "--port", str(port),
            "--server-args", '{"gpu_memory_utilization": 0.5}',
            "--server-log", str(tmp_path / "logs" / "server.log"),
            "--server-command", json.dumps([sys.executable, str(tmp_path / "standin.py")]),
            "--grace", str(grace), "--health-timeout", str(timeout),
            "--", sys.executable, str(tmp_path / "trainer.py"),
            str(tmp_path / "trainer.json"), action,
        ]  # fmt: skip
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5,7", "STANDIN_MODE": mode,
               "STANDIN_RECORD": str(tmp_path / "server.json")}  # fmt: skip
        return wrapper, env

    def server() -> dict:
        return json.loads((tmp_path / "server.json").read_text())

    def trainer() -> dict | None:
        path = tmp_path / "trainer.json"
        return json.loads(path.read_text()) if path.exists() else None

    return SimpleNamespace(command=command, server=server, trainer=trainer, tmp=tmp_path)


def assert_server_stopped(server: dict) -> None:
    assert wait_until(lambda: not alive(server["pid"]), 5), "server still running"
    assert wait_until(lambda: not alive(server["worker"]), 5), "server's worker still running"


def test_wrapper_runs_command_after_health_and_stops_the_server(harness):
    cmd, env = harness.command("ok")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    server, trainer = harness.server(), harness.trainer()
    assert server["cuda"] == "7" and trainer["cuda"] == "3,5"  # last GPU serves
    assert trainer["job_gpus"] == "3,5,7"  # what rank 0's GPU log samples (aha.launch.gpu_monitor)
    assert trainer["health"] == 200  # the command started only once the server was healthy
    # `vllm serve` as TRL runs it, on this node only, the run's options replacing TRL's
    assert server["argv"] == [
        "Org/Model", "--host", "127.0.0.1", "--port", server["argv"][4],
        "--gpu-memory-utilization", "0.5", "--model-impl", "vllm", "--enable-scale-out",
        "--weight-transfer-config", '{"backend": "nccl"}', "--logprobs-mode",
        "processed_logprobs", "--max-logprobs", "-1",
    ]  # fmt: skip
    assert server["dev_mode"] == "1"  # TRL's weight-transfer endpoints
    assert f"vLLM server log: {harness.tmp / 'logs' / 'server.log'}" in proc.stderr
    assert (harness.tmp / "logs" / "server.log").exists()
    assert_server_stopped(server)


def test_wrapper_exits_with_the_command_status_and_stops_the_server(harness):
    cmd, env = harness.command("fail")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert harness.trainer()["health"] == 200
    assert_server_stopped(harness.server())


def test_sigterm_is_forwarded_to_the_command_and_the_server_stopped(harness):
    cmd, env = harness.command("wait")
    started = harness.tmp / "trainer.json.started"
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(started.exists, 30), "training command never started"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (harness.tmp / "trainer.json.term").exists(), "SIGTERM not forwarded"
    assert proc.returncode == 143, stderr  # the command's own status after handling SIGTERM
    assert "forwarding it to the training command" in stderr
    assert_server_stopped(harness.server())


def test_server_dying_before_health_fails_fast_without_running_the_command(harness):
    cmd, env = harness.command("ok", mode="die", timeout=120)
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 20  # not the 120 s health timeout
    assert proc.returncode == 1
    assert "vLLM server exited with status 7 before answering" in proc.stderr
    assert "server.log" in proc.stderr.strip().splitlines()[-1]
    assert harness.trainer() is None


def test_unhealthy_server_times_out_and_is_stopped(harness):
    cmd, env = harness.command("ok", mode="unhealthy", timeout=2)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "not healthy at http://127.0.0.1:" in proc.stderr and "after 2 s" in proc.stderr
    assert harness.trainer() is None
    assert_server_stopped(harness.server())


def test_server_ignoring_sigterm_is_killed_after_the_grace_period(harness):
    cmd, env = harness.command("ok", mode="stubborn", grace=1.0)
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 20
    assert_server_stopped(harness.server())


def test_wrapper_refuses_a_busy_port(harness):
    cmd, env = harness.command("ok")
    port = int(cmd[cmd.index("--port") + 1])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"grpo.vllm_server_port: port {port} is already in use" in proc.stderr
    assert not (harness.tmp / "server.json").exists()


def test_wrapper_needs_a_command():
    from aha.launch.vllm_server import cli

    with pytest.raises(SystemExit) as exc:
        cli(["--model", "M", "--gpus", "2"], "with-vllm-server")
    assert exc.value.code == 2


# --- environment checks ---------------------------------------------------------------------

HINT = gpu.INSTALL_HINT


def test_missing_gpu_package_names_the_install(monkeypatch):
    monkeypatch.setattr(gpu, "has_package", lambda name: name != "bitsandbytes")
    with pytest.raises(gpu.GpuEnvError) as err:
        gpu.check_run(spec("qlora"))
    assert str(err.value) == f"mode qlora needs bitsandbytes: {HINT}"
    monkeypatch.setattr(gpu, "has_package", lambda name: name != "vllm")
    with pytest.raises(gpu.GpuEnvError, match=r"^mode zero3 with grpo\.use_vllm needs vllm: pip"):
        gpu.check_run(spec("zero3", use_vllm=True))


def test_has_package_treats_a_blocked_module_as_missing(monkeypatch):
    assert gpu.has_package("yaml")
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert not gpu.has_package("yaml")
    assert not gpu.has_package("surely_not_a_package_here")


def test_gpu_mode_without_cuda_names_the_cpu_config(monkeypatch):
    import torch

    monkeypatch.setattr(gpu, "has_package", lambda name: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(gpu.GpuEnvError) as err:
        gpu.check_run(spec("qlora"))
    assert str(err.value) == "mode qlora needs a CUDA GPU; on CPU use config/tiny.yaml (mode cpu)"
    gpu.check_run(spec("cpu"))  # nothing to check on CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu.check_run(spec("zero3", use_vllm=True))


def test_resolve_model_accepts_a_model_dir_and_refuses_others(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(gpu.GpuEnvError, match=r"directory has no config\.json"):
        gpu.resolve_model(str(model))
    (model / "config.json").write_text("{}")
    assert gpu.resolve_model(str(model)) == str(model)
    with pytest.raises(gpu.GpuEnvError, match="no such directory"):
        gpu.resolve_model(str(tmp_path / "missing"))
    with pytest.raises(gpu.GpuEnvError, match="no such directory"):
        gpu.resolve_model("results/models/tiny-not-built")


def test_resolve_model_hub_ids_offline_and_online(monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f: "/c/config.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert gpu.resolve_model("Org/Cached") == "Org/Cached"  # cached: fine offline

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f: None)
    with pytest.raises(gpu.GpuEnvError) as err:
        gpu.resolve_model("Org/Model")
    assert str(err.value) == (
        "model Org/Model is not in the Hub cache and HF_HUB_OFFLINE is set: run `hf download "
        "Org/Model` where there is network, or set model.name_or_path to a local directory"
    )

    monkeypatch.delenv("HF_HUB_OFFLINE")
    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/x"))

    def not_found(repo_id, timeout):
        raise RepositoryNotFoundError("404", response=response)

    def unreachable(repo_id, timeout):
        raise ConnectionError("no route")

    monkeypatch.setattr(huggingface_hub, "model_info", not_found)
    with pytest.raises(gpu.GpuEnvError, match=r"no such model on the Hub; fix model\.name_or_path"):
        gpu.resolve_model("Org/Typo")
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(gpu.GpuEnvError, match=r"the Hub is unreachable \(ConnectionError\)"):
        gpu.resolve_model("Org/Model")
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, timeout: object())
    assert gpu.resolve_model("Org/Model") == "Org/Model"


def test_check_gpu_cli_exits_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(gpu, "has_package", lambda name: name != "deepspeed")
    with pytest.raises(SystemExit) as exc:
        gpu.cli(["--run", spec("zero3").to_json()], "python -m aha check-gpu")
    assert str(exc.value.code) == f"python -m aha check-gpu: mode zero3 needs deepspeed: {HINT}"
    gpu.cli(["--run", spec("cpu").to_json()], "check-gpu")
    assert capsys.readouterr().out.strip() == "check-gpu: ok (mode cpu)"
    with pytest.raises(SystemExit) as exc:  # not a Run: argparse's one-line usage error
        gpu.cli(["--run", json.dumps({"mode": "cpu"})], "check-gpu")
    assert exc.value.code == 2
    assert "argument --run: run: missing" in capsys.readouterr().err


def test_gpu_modules_import_no_heavy_package():
    code = (
        "import sys, aha.launch.commands, aha.launch.vllm_server, aha.launch.gpu, aha.launch.vllm_sampler; "
        "print(sorted(m for m in ('torch', 'vllm', 'deepspeed', 'bitsandbytes', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- vLLM sampling glue ---------------------------------------------------------------------


def test_lora_rank_rounds_up_to_a_rank_vllm_supports(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16}))
    assert lora_rank(tmp_path) == 16
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 24}))
    assert lora_rank(tmp_path) == 32
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q": 64}}))
    assert lora_rank(tmp_path) == 64
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        lora_rank(tmp_path / "nothing")


def test_to_completions_is_prompt_major_with_truncation_flags():
    def out(index, text, n, reason):
        return SimpleNamespace(
            index=index, text=text, token_ids=list(range(n)), finish_reason=reason
        )

    requests = [
        SimpleNamespace(outputs=[out(1, "b", 5, "length"), out(0, "a", 3, "stop")]),
        SimpleNamespace(outputs=[out(0, "c", 4, "stop"), out(1, "d", 2, "stop")]),
    ]
    assert to_completions(requests, 2) == [
        Completion("a", 3, False),
        Completion("b", 5, True),
        Completion("c", 4, False),
        Completion("d", 2, False),
    ]
    with pytest.raises(RuntimeError, match="1 completions for prompt 0, not 2"):
        to_completions([SimpleNamespace(outputs=[out(0, "a", 1, "stop")])], 2)
