"""aha.launch.weight_sync: a hung call to the vLLM server ends the process in bounded time, naming it.

The watchdog is tested on its own; the fail-fast path runs in a subprocess (it ends the process)
against a stand-in that never answers; install() is tested on the installed TRL's VLLMClient,
alone and together with the CPU rehearsal's replacements, in either order.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aha.launch import cpu_rehearsal, weight_sync

ROOT = Path(__file__).resolve().parents[2]
# Generous upper bounds on a whole subprocess (interpreter start and imports included, on a
# shared machine) whose watchdog fires after 2 s: the only timing the tests assert.
EXIT_WITHIN_S = 30
EXIT_WITHIN_WITH_TRL_S = 60  # importing TRL (and torch) takes seconds of its own


def run_script(script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,  # TimeoutExpired fails the test: the watchdog did not end it
    )


# ----------------------------------------------------------------------------- the watchdog


def test_deadline_passes_a_fast_call_through_and_never_fires() -> None:
    fired = threading.Event()
    with weight_sync.deadline(0.2, "a fast call", on_expiry=lambda message: fired.set()):
        value = sum(range(10))
    assert value == 45
    assert not fired.wait(1.0)  # well past the bound: disarmed for good


def test_deadline_disarms_when_the_body_raises() -> None:
    fired = threading.Event()
    with (
        pytest.raises(KeyError),
        weight_sync.deadline(0.2, "a failing call", on_expiry=lambda m: fired.set()),
    ):
        raise KeyError("x")
    assert not fired.wait(1.0)


def test_deadline_reports_a_call_that_outlives_it() -> None:
    messages: list[str] = []
    fired = threading.Event()

    def on_expiry(message: str) -> None:
        messages.append(message)
        fired.set()

    with weight_sync.deadline(0.1, lambda: "the stand-in", on_expiry=on_expiry):
        assert fired.wait(30)
    assert messages == ["the stand-in did not finish within 0.1 s"]


def test_deadline_reports_even_when_the_description_fails() -> None:
    messages: list[str] = []
    fired = threading.Event()

    def broken() -> str:
        raise RuntimeError("no address")

    def on_expiry(message: str) -> None:
        messages.append(message)
        fired.set()

    with weight_sync.deadline(0.1, broken, on_expiry=on_expiry):
        assert fired.wait(30)
    assert "description failed" in messages[0] and "no address" in messages[0]


@pytest.mark.parametrize("seconds", [0, -1, float("nan")])
def test_deadline_refuses_a_bound_that_is_not_positive(seconds: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"), weight_sync.deadline(seconds, "x"):
        pass


def test_a_call_that_never_answers_ends_the_process_naming_it(tmp_path: Path) -> None:
    log_file = tmp_path / "train.log"
    result = run_script(
        f"""
        import logging, sys, threading
        logging.basicConfig(filename={str(log_file)!r}, level=logging.INFO)
        from aha.launch import weight_sync
        assert "trl" not in sys.modules, "aha.launch.weight_sync imported TRL"
        with weight_sync.deadline(2, "a stand-in that never answers"):
            threading.Event().wait()
        """,
        EXIT_WITHIN_S,
    )
    message = "a stand-in that never answers did not finish within 2 s"
    assert result.returncode == weight_sync.EXIT_STATUS, result.stderr
    assert message in result.stderr  # the log is a file: said on stderr as well
    assert message in log_file.read_text()  # and flushed to the logging handler
    assert "most recent call first" in result.stderr  # faulthandler's dump of the stacks


# ----------------------------------------------------------------------------- TRL's client


@pytest.fixture
def client_class(monkeypatch: pytest.MonkeyPatch) -> type:
    """TRL's VLLMClient, its bounded methods and aha.launch.weight_sync's settings restored afterwards."""
    from trl.generation.vllm_client import VLLMClient

    for name in weight_sync.CALLS:
        monkeypatch.setattr(VLLMClient, name, VLLMClient.__dict__[name])
    monkeypatch.setattr(weight_sync, "_settings", None)
    return VLLMClient


def test_the_bounded_calls_are_methods_of_the_installed_trl() -> None:
    from trl.generation.vllm_client import VLLMClient

    missing = [name for name in weight_sync.CALLS if not callable(VLLMClient.__dict__.get(name))]
    assert not missing, f"TRL's VLLMClient has no {missing}: update aha.launch.weight_sync.CALLS"


def test_install_wraps_each_call_once(client_class: type) -> None:
    originals = {name: client_class.__dict__[name] for name in weight_sync.CALLS}
    assert weight_sync.install(300) == list(weight_sync.CALLS)
    wrapped = {name: client_class.__dict__[name] for name in weight_sync.CALLS}
    for name, method in wrapped.items():
        assert method is not originals[name] and method.__wrapped__ is originals[name]
        assert method.__name__ == name
    weight_sync.install(60, generation_timeout_s=900)  # idempotent: only the settings change
    assert {name: client_class.__dict__[name] for name in weight_sync.CALLS} == wrapped
    assert (weight_sync._settings.timeout_s, weight_sync._settings.generation_timeout_s) == (
        60,
        900,
    )


@pytest.mark.parametrize("timeouts", [(0, None), (300, 0)])
def test_install_refuses_a_bound_that_is_not_positive(client_class: type, timeouts: tuple) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        weight_sync.install(timeouts[0], generation_timeout_s=timeouts[1])


def test_a_bounded_call_returns_its_result_and_raises_its_errors(
    client_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def generate(self: Any, prompts: list[str], n: int = 1, **kwargs: Any) -> dict:
        seen.append((prompts, n, kwargs))
        return {"completion_ids": [[1, 2]]}

    def reset_prefix_cache(self: Any) -> None:
        raise ConnectionError("server gone")

    monkeypatch.setattr(client_class, "generate", generate)
    monkeypatch.setattr(client_class, "reset_prefix_cache", reset_prefix_cache)
    weight_sync.install(300)
    client = object.__new__(client_class)
    assert client.generate(["p"], n=2, temperature=1.0) == {"completion_ids": [[1, 2]]}
    assert seen == [(["p"], 2, {"temperature": 1.0})]
    with pytest.raises(ConnectionError, match="server gone"):
        client.reset_prefix_cache()
    assert client.generate(["q"]) == {"completion_ids": [[1, 2]]}  # no depth left behind


def test_a_nested_call_runs_under_the_outer_deadline(
    client_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    armed: list[float] = []
    real_deadline = weight_sync.deadline

    def counting(seconds: float, *args: Any, **kwargs: Any) -> Any:
        armed.append(seconds)
        return real_deadline(seconds, *args, **kwargs)

    def update_named_params(self: Any, metadata: list, named_params: Iterator) -> str:
        return f"{metadata[0][0]}:{len(list(named_params))}"

    monkeypatch.setattr(client_class, "update_named_params", update_named_params)
    monkeypatch.setattr(weight_sync, "deadline", counting)
    weight_sync.install(300, generation_timeout_s=900)
    client = object.__new__(client_class)
    assert client.update_named_param("w", torch.zeros(2)) is None  # TRL's, calling the above
    assert armed == [300]  # update_named_param's deadline only


def exercise_rehearsal_calls(client_class: type) -> None:
    """The CPU rehearsal's replacements still do what they do: no NCCL, the iterator drained."""
    client = object.__new__(client_class)
    assert client.init_communicator(device="cpu") is None
    drained: list[int] = []
    params = ((f"p{i}", drained.append(i)) for i in range(3))
    assert client.update_named_params([("p0", "float32", [1])], params) is None
    assert drained == [0, 1, 2]


def test_install_after_the_rehearsal_bounds_its_replacements(client_class: type) -> None:
    cpu_rehearsal.skip_server_weight_sync()
    skipped = client_class.__dict__["init_communicator"]
    weight_sync.install(300)
    bounded = client_class.__dict__["init_communicator"]
    assert bounded is not skipped and bounded.__wrapped__ is skipped
    assert bounded._aha_skipped  # the rehearsal's own idempotency mark shows through
    cpu_rehearsal.skip_server_weight_sync()  # so a second prepare() leaves the bound in place
    assert client_class.__dict__["init_communicator"] is bounded
    exercise_rehearsal_calls(client_class)


def test_the_rehearsal_after_install_keeps_working(client_class: type) -> None:
    weight_sync.install(300)
    cpu_rehearsal.skip_server_weight_sync()  # replaces two bounded methods with its no-ops
    exercise_rehearsal_calls(client_class)
    assert client_class.__dict__["reset_prefix_cache"]._aha_deadline  # the rest stay bounded
    weight_sync.install(300)  # bounds the replacements too
    for name in ("init_communicator", "update_named_params"):
        method = client_class.__dict__[name]
        assert method._aha_deadline and not hasattr(method.__wrapped__, "__wrapped__")
    exercise_rehearsal_calls(client_class)


def test_describe_call_names_the_server_and_the_group_port() -> None:
    client = SimpleNamespace(base_url="http://10.1.2.3:8000", group_port=51216)
    assert weight_sync.describe_call("init_communicator", client) == (
        "NCCL rendezvous with the vLLM server at 10.1.2.3:8000, group port 51216"
    )
    assert "at ?" in weight_sync.describe_call("generate", object())
