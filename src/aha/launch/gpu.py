"""Environment checks for the GPU modes, each failing with one line that names the fix.

A GPU job that dies after an hour in a queue with a 200-line traceback about a missing CUDA
library is the expensive way to learn the environment was wrong; these checks run first and
say what to do instead. Everything heavy (torch, huggingface_hub) is imported lazily, and
packages are probed with `importlib.util.find_spec`, which does not import them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aha.run import Run

INSTALL_HINT = "pip install 'aha-countdown[gpu]' or use environment.yml (CPU rehearsal: make install-rehearsal)"


class GpuEnvError(RuntimeError):
    """The environment cannot run the requested mode; the message is one line with the fix."""


def has_package(name: str) -> bool:
    """Whether `name` is importable, without importing it (a None in sys.modules counts as no)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_package(name: str, why: str) -> None:
    if not has_package(name):
        raise GpuEnvError(f"{why} needs {name}: {INSTALL_HINT}")


def require_cuda(mode: str) -> None:
    """Refuse a GPU mode on a machine where torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise GpuEnvError(f"mode {mode} needs a CUDA GPU; on CPU use config/tiny.yaml (mode cpu)")


def check_run(run: Run) -> None:
    """All checks for training `run`: its mode's packages (`Mode.packages`), vllm with
    grpo.use_vllm, CUDA on cuda; nothing for a mode that only runs on the CPU.

    Packages are checked before CUDA: a missing package is the likelier mistake on a GPU node
    and its fix is different. A rehearsal (device cpu) needs the same packages, no CUDA.
    """
    mode = run.mode
    if mode.cpu_only:
        return
    for package in mode.packages:
        require_package(package, f"mode {mode.name}")
    if run.grpo.get("use_vllm"):
        require_package("vllm", f"mode {mode.name} with grpo.use_vllm")
    if run.device == "cuda":
        require_cuda(mode.name)


def check_vllm_sampling(device: str = "cuda") -> None:
    """Checks for sampling with vLLM (on the GPU, or its CPU build for a rehearsal)."""
    require_package("vllm", "sampling with vLLM")
    if device == "cuda":
        require_cuda("sampling with vLLM")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model(name_or_path: str) -> str:
    """A local model directory, or a Hub id that is cached or reachable; else one-line error.

    Returns the local directory (as given) or the Hub id unchanged: the trainer and vLLM resolve
    Hub ids themselves, this only makes sure they will be able to.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GpuEnvError(
                f"model {name_or_path}: directory has no config.json; point model.name_or_path "
                "at a saved transformers model"
            )
        return name_or_path
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local or path.exists():
        raise GpuEnvError(
            f"model {name_or_path}: no such directory; fix model.name_or_path or use a Hub id "
            "such as Qwen/Qwen2.5-3B-Instruct"
        )
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return name_or_path  # in the local Hub cache: loads offline too
    if _hub_offline():
        raise GpuEnvError(
            f"model {name_or_path} is not in the Hub cache and HF_HUB_OFFLINE is set: run "
            f"`hf download {name_or_path}` where there is network, or set model.name_or_path "
            "to a local directory"
        )
    return _check_on_hub(name_or_path)


def _check_on_hub(repo_id: str) -> str:
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=15)
    except GatedRepoError:
        raise GpuEnvError(
            f"model {repo_id} is gated on the Hub: accept its licence and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise GpuEnvError(
            f"model {repo_id}: no such model on the Hub; fix model.name_or_path"
        ) from None
    except Exception as err:  # network errors come in many classes (requests, httpx, OSError)
        raise GpuEnvError(
            f"model {repo_id}: the Hub is unreachable ({type(err).__name__}); download it "
            f"where there is network (`hf download {repo_id}`) or use a local directory"
        ) from None
    return repo_id


def cli(argv: list[str], prog: str) -> None:
    """`python -m aha check-gpu`: check that this machine can train a run (packages, CUDA,
    model) before a launcher that would fail obscurely; exits 1 with one line naming the fix.

    `accelerate launch` with a DeepSpeed config fails inside accelerate, with a traceback, when
    deepspeed is missing; the train rule runs this first so the log starts with the fix.
    """
    from aha.cli import failing_as, json_arg, parser
    from aha.run import Run

    p = parser(prog, cli.__doc__)
    p.add_argument(
        "--run",
        required=True,
        type=json_arg(Run.from_json),
        metavar="JSON",
        help="the run as one JSON object (aha.run.Run.to_json; its mode, device and grpo)",
    )
    p.add_argument(
        "--model", default=None, help="model to check: a local directory or a Hub id (optional)"
    )
    args = p.parse_args(argv)
    with failing_as(prog, GpuEnvError):
        check_run(args.run)
        if args.model:
            resolve_model(args.model)
    print(f"{prog}: ok (mode {args.run.mode.name}{', model ' + args.model if args.model else ''})")
