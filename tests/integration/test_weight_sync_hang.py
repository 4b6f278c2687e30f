"""A hung weight-sync init ends the process, naming it: a real subprocess waits out its deadline."""

from __future__ import annotations

from aha.launch import weight_sync
from tests.unit.test_weight_sync import (
    EXIT_WITHIN_WITH_TRL_S,
    run_script,
)


def test_a_hung_init_communicator_ends_the_process_naming_it() -> None:
    result = run_script(
        """
        import logging, threading
        logging.basicConfig(level=logging.INFO)
        from trl.generation.vllm_client import VLLMClient

        def init_communicator(self, device=0):  # a server that never joins the rendezvous
            threading.Event().wait()

        VLLMClient.init_communicator = init_communicator
        from aha.launch import weight_sync
        weight_sync.install(2, setting="runs.r.weight_sync_timeout_s")
        client = object.__new__(VLLMClient)  # no server: only what the message reads
        client.base_url, client.group_port = "http://10.1.2.3:8000", 51216
        client.init_communicator(device="cuda:0")
        """,
        EXIT_WITHIN_WITH_TRL_S,
    )
    message = (
        "weight sync: VLLMClient.init_communicator (NCCL rendezvous with the vLLM server at "
        "10.1.2.3:8000, group port 51216) did not finish within 2 s; ending this process "
        f"(exit status {weight_sync.EXIT_STATUS})"
    )
    assert result.returncode == weight_sync.EXIT_STATUS, result.stderr
    assert result.stderr.count(message) == 1, result.stderr  # the handler says it, once
    assert "raise runs.r.weight_sync_timeout_s" in result.stderr
    assert "in init_communicator" in result.stderr  # the stuck frame, in the stack dump
