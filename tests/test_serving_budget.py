"""KV-capacity prediction, up-front refusals and vLLM-log reading (no server: these are pure functions).

The capacity lines and refusals themselves are one table in test_vllm_rules.py (checked against vLLM's engine
there); these tests cover KVBudget's own arithmetic and wording."""

from __future__ import annotations

import json
import os

import pytest

from tinyformer.config import ModelConfig
from tinyformer.export.awq import SERVE_DTYPE, awq_quantization_config
from tinyformer.serving import KVBudget, ServingConfigError, VLLMServer, bytes_for_tokens, kv_bytes_per_token
from tinyformer.serving.budget import check_serving_config, model_config_from_dir
from tinyformer.serving.metrics import metric_labels, parse_metrics
from tinyformer.serving.vllm_log import explain, layers_loaded, parse_iterations, parse_kv_report, root_cause

MICRO = ModelConfig(vocab_size=55, n_positions=256, n_embd=128, n_layer=2, n_head=4)
BLOCK = 128 * 2048  # one CPU block of the micro model in float32: 128 tokens x 2048 bytes


def budget(kv_cache_bytes: int, max_model_len: int = 256, **kw) -> KVBudget:
    return KVBudget(MICRO, max_model_len=max_model_len, kv_cache_bytes=kv_cache_bytes, **kw)


def test_bytes_per_token_is_k_and_v_for_every_layer_and_width():
    assert kv_bytes_per_token(MICRO, "float32") == 2 * 2 * 128 * 4 == 2048
    assert kv_bytes_per_token(MICRO, "bfloat16") == 1024
    assert kv_bytes_per_token(MICRO, "float32", tensor_parallel_size=2) == 1024  # each worker: half the heads


def test_tokens_follow_max_model_len_when_it_is_not_a_whole_number_of_blocks():
    # A 200-token request still occupies 2 blocks; vLLM reports concurrency x max_model_len.
    b = budget(10 * BLOCK, max_model_len=200)
    assert (b.blocks_per_request, b.max_concurrency, b.tokens) == (2, 5.0, 1000)
    assert b.num_blocks * b.block_size == 1280  # token slots: more than vLLM reports


def test_partial_blocks_are_not_counted():
    assert budget(10 * BLOCK + BLOCK - 1).num_blocks == 10


def test_tokens_are_rounded_up_to_whole_blocks():
    assert bytes_for_tokens(MICRO, 1) == BLOCK
    assert bytes_for_tokens(MICRO, 1280) == 10 * BLOCK
    assert bytes_for_tokens(MICRO, 1281) == 11 * BLOCK
    assert bytes_for_tokens(MICRO, 1280, tensor_parallel_size=2) == 5 * BLOCK
    with pytest.raises(ServingConfigError, match="positive integer"):
        bytes_for_tokens(MICRO, 0)


def test_gpu_blocks_are_16_tokens_and_cpu_blocks_can_be_set():
    b = budget(10 * 16 * 2048, device="cuda")
    assert (b.num_blocks, b.blocks_per_request, b.tokens) == (10, 16, 160)
    assert b.log_line().startswith("GPU KV cache size: 160 tokens")
    b = budget(10 * 32 * 2048, block_size=32)
    assert (b.num_blocks, b.blocks_per_request, b.tokens) == (10, 8, 320)
    with pytest.raises(ServingConfigError, match="multiple of 32"):
        check_serving_config(budget(10 * BLOCK, block_size=16))


def test_refusals_name_the_limit_in_tokens_and_bytes():
    with pytest.raises(ServingConfigError, match=r"max_model_len=512 .*n_positions=256"):
        check_serving_config(budget(10 * BLOCK, max_model_len=512))
    with pytest.raises(ServingConfigError, match=r"262,144 bytes leaves no usable block.*524,288 bytes"):
        check_serving_config(budget(BLOCK))  # vLLM keeps one block back, so one block is nothing
    with pytest.raises(ServingConfigError, match=r"2 blocks, of which 1 usable = 128 tokens.*kv_cache_tokens=384"):
        check_serving_config(budget(2 * BLOCK))
    check_serving_config(budget(3 * BLOCK))  # 2 usable blocks hold one 256-token request


def test_head_size_and_tensor_parallel_refusals():
    with pytest.warns(UserWarning):
        odd_heads = ModelConfig(vocab_size=55, n_positions=256, n_embd=128, n_layer=2, n_head=8)  # head_dim 16
    with pytest.raises(ServingConfigError, match="head size"):
        check_serving_config(KVBudget(odd_heads, max_model_len=256, kv_cache_bytes=10 * BLOCK))
    check_serving_config(KVBudget(odd_heads, max_model_len=256, kv_cache_bytes=10 * BLOCK, device="cuda"))
    with pytest.raises(ServingConfigError, match="must divide n_head=4"):
        check_serving_config(budget(10 * BLOCK, tensor_parallel_size=3))


def test_pipeline_stages_hold_whole_layers_so_a_token_costs_each_worker_less():
    """PP=2: each worker caches the keys and values of its own layer only; the budget is per worker, so the same
    bytes hold twice the tokens. With an odd number of layers the fullest stage decides (vLLM gives every worker the
    blocks the fullest one can hold)."""
    assert kv_bytes_per_token(MICRO, "float32", pipeline_parallel_size=2) == 1024
    assert kv_bytes_per_token(MICRO, "float32", tensor_parallel_size=2, pipeline_parallel_size=2) == 512
    one, two = budget(10 * BLOCK), budget(10 * BLOCK, pipeline_parallel_size=2)
    assert (two.num_blocks, two.tokens, two.max_concurrency) == (20, 2 * one.tokens, 2 * one.max_concurrency)
    assert (two.workers, two.stage_layers) == (2, [1, 1])
    assert "per worker (pipeline parallel 2: layers [1, 1])" in two.summary()
    three_layers = ModelConfig(vocab_size=55, n_positions=256, n_embd=128, n_layer=3, n_head=4)
    assert kv_bytes_per_token(three_layers, "float32", pipeline_parallel_size=2) == 2 * 2 * 128 * 4  # 2 of 3 layers
    assert bytes_for_tokens(MICRO, 1280, pipeline_parallel_size=2) == 5 * BLOCK


def test_more_stages_than_layers_is_refused():
    with pytest.raises(ServingConfigError, match=r"pipeline_parallel_size=3 is more stages .*n_layer=2"):
        check_serving_config(budget(10 * BLOCK, pipeline_parallel_size=3))


def write_config(folder, **overrides):
    config = {"model_type": "gpt2", "vocab_size": 55, "n_positions": 256, "n_embd": 128, "n_layer": 2, "n_head": 4}
    (folder / "config.json").write_text(json.dumps({**config, **overrides}))
    return folder


def test_server_refuses_before_starting_anything(tmp_path):
    write_config(tmp_path)
    assert model_config_from_dir(tmp_path) == MICRO
    with pytest.raises(ServingConfigError, match="n_positions=256"):
        VLLMServer(tmp_path, max_model_len=300, shared=False)
    with pytest.raises(ServingConfigError, match="not both"):
        VLLMServer(tmp_path, kv_cache_tokens=512, kv_cache_bytes=BLOCK, shared=False)
    server = VLLMServer(tmp_path, max_model_len=300, check=False, shared=False)  # the flag lets vLLM decide
    assert "--max-model-len" in server.command() and server.pid is None
    with pytest.raises(FileNotFoundError, match="export"):
        VLLMServer(tmp_path / "missing")


def test_default_budget_is_64_full_length_requests_of_which_63_run_at_once(tmp_path):
    server = VLLMServer(write_config(tmp_path), shared=False)
    assert server.max_model_len == 256
    assert server.predicted.max_concurrency == 64.0 and server.predicted.tokens == 64 * 256
    assert server.predicted.usable_blocks // server.predicted.blocks_per_request == 63  # the null block


def test_a_pipeline_runs_compiled_in_worker_processes_of_their_own(tmp_path):
    """PP=2 on CPU: vLLM's worker processes (never the worker inside the engine), the compiled path (eager died on
    the first request, server._eager_for), and the pipeline flag on the command line."""
    server = VLLMServer(write_config(tmp_path), pipeline_parallel_size=2, check=False, shared=False)
    assert (server.workers, server.worker_in_engine, server.enforce_eager) == (2, False, False)
    assert "--pipeline-parallel-size=2" in server.command() and "--enforce-eager" not in server.command()
    assert "--distributed-executor-backend=uni" not in server.command()
    one = VLLMServer(tmp_path, shared=False)
    assert (one.workers, one.worker_in_engine, one.enforce_eager) == (1, True, True)
    assert "--pipeline-parallel-size" not in " ".join(one.command())
    assert server.predicted.tokens == one.predicted.tokens == 64 * 256  # the default budget is in tokens...
    assert server.kv_cache_bytes == one.kv_cache_bytes // 2  # ...which cost each worker half the bytes
    with pytest.raises(ServingConfigError, match="enforce_eager=True with pipeline_parallel_size=2 on CPU"):
        VLLMServer(tmp_path, pipeline_parallel_size=2, enforce_eager=True, shared=False)


@pytest.mark.parametrize("size", [0, -1, 1.5, "2", True, None])
def test_parallel_sizes_are_whole_numbers_of_at_least_one(tmp_path, size):
    for name in ("tensor_parallel_size", "pipeline_parallel_size"):
        with pytest.raises(ServingConfigError, match=f"{name} must be a whole number of at least 1"):
            VLLMServer(write_config(tmp_path), shared=False, **{name: size})


def test_more_workers_than_cores_is_refused_up_front(tmp_path):
    """Each CPU worker gets cores of its own (VLLM_CPU_OMP_THREADS_BIND): tp x pp workers need that many cores.
    vLLM itself would start, then refuse in its engine (test_serving_parallel.py)."""
    cores = len(os.sched_getaffinity(0))
    deep = write_config(tmp_path, n_layer=cores + 1)
    with pytest.raises(ServingConfigError, match=rf"pipeline_parallel_size={cores + 1} runs {cores + 1} vLLM workers"):
        VLLMServer(deep, pipeline_parallel_size=cores + 1, shared=False)
    stages = cores // 2 + 1  # 2 x stages workers, more than the cores: the product counts, not either size alone
    with pytest.raises(ServingConfigError, match=f"tensor_parallel_size=2 x pipeline_parallel_size={stages} runs"):
        VLLMServer(deep, tensor_parallel_size=2, pipeline_parallel_size=stages, shared=False)
    assert VLLMServer(deep, pipeline_parallel_size=cores + 1, check=False, shared=False).workers == cores + 1


def test_an_awq_export_is_served_in_the_dtype_it_needs_or_refused_up_front(tmp_path):
    """Like ``tinyformer serve``: the class's defaults pick float16; float32, which vLLM's AWQ path refuses in
    start-up, is refused before anything starts, saying what to pass instead."""
    awq = write_config(tmp_path, quantization_config=awq_quantization_config(32))
    assert VLLMServer(awq, shared=False).dtype == SERVE_DTYPE
    assert "--dtype float16" in " ".join(VLLMServer(awq, shared=False).command())
    with pytest.raises(ServingConfigError, match="Leave dtype out"):
        VLLMServer(awq, dtype="float32", shared=False)
    assert VLLMServer(awq, dtype="float32", check=False, shared=False).dtype == "float32"  # vLLM's own error
    plain = tmp_path / "plain"
    plain.mkdir()
    assert VLLMServer(write_config(plain), shared=False).dtype == "float32"


# Lines copied from real vLLM 0.32 logs.
KV_LOG = (
    "(EngineCore pid=8094) INFO 11-23 10:48:58 [kv_cache_utils.py:2327] CPU KV cache size: 1,280 tokens, "
    "Maximum concurrency for 256 tokens per request: 5.00x\n"
)
MAX_LEN_LOG = """(APIServer pid=20275) WARNING 11-23 11:17:19 [system_utils.py:255] Found ulimit of 20000 and failed to automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, User-specified max_model_len (512) is greater than the derived max_model_len (max_position_embeddings=256.0 or model_max_length=None in model's config.json). To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.
"""  # noqa: E501
TP_HEADS_LOG = """pydantic_core._pydantic_core.ValidationError: 1 validation error for VllmConfig
  Value error, Total number of attention heads (1) must be divisible by tensor parallel size (2). [type=value_error, input_value=ArgsKwargs((), {'model_co... 'shutdown_timeout': 0}), input_type=ArgsKwargs]
"""  # noqa: E501
KV_BUDGET_LOG = """(EngineCore pid=13889) ERROR 11-23 10:59:24 [core.py:1510]     raise ValueError(
(EngineCore pid=13889) ERROR 11-23 10:59:24 [core.py:1510] ValueError: To serve at least one request with the model's max seq len (256), (0.0 GiB KV cache is needed, which is larger than the available KV cache memory (0.0 GiB).
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""  # noqa: E501


def test_kv_report_is_parsed_for_cpu_and_gpu():
    reported = parse_kv_report(KV_LOG)
    assert (reported.device, reported.tokens, reported.max_model_len, reported.max_concurrency) == ("CPU", 1280, 256, 5)
    gpu = parse_kv_report("GPU KV cache size: 123,456 tokens, Maximum concurrency for 2,048 tokens per request: 60.28x")
    assert (gpu.device, gpu.tokens, gpu.max_model_len, gpu.max_concurrency) == ("GPU", 123456, 2048, 60.28)
    assert parse_kv_report("nothing here") is None


def test_root_cause_is_vllms_specific_line_not_the_wrapper():
    assert root_cause(MAX_LEN_LOG).startswith("User-specified max_model_len (512) is greater than")
    assert (
        root_cause(TP_HEADS_LOG) == "Total number of attention heads (1) must be divisible by tensor parallel size (2)."
    )
    cause = root_cause(KV_BUDGET_LOG)
    assert cause.startswith("ValueError: To serve at least one request")
    assert root_cause("all fine\n") is None


def test_colour_codes_do_not_hide_the_log_level():
    coloured = (
        "\x1b[0;36m(APIServer pid=29806)\x1b[0;0m \x1b[33mWARNING\x1b[0m \x1b[90m11-23 11:40:31\x1b[0m "
        "\x1b[90m[system_utils.py:255]\x1b[0m fd limit errors like `OSError: [Errno 24] Too many open files`.\n"
    )
    assert root_cause(coloured + MAX_LEN_LOG.split("\n", 1)[1]).startswith("User-specified max_model_len (512)")
    assert parse_kv_report("\x1b[0;36m(EngineCore pid=1)\x1b[0;0m INFO " + KV_LOG.split(" INFO ", 1)[1]).tokens == 1280


# Lines copied from a real vLLM 0.32 DEBUG log of the micro model served with --pipeline-parallel-size 2.
PIPELINE_DEBUG_LOG = """(Worker_PP1 pid=14460) DEBUG 12-06 20:13:12 [model_executor/layers/linear.py:1342] Loaded shard None with shape torch.Size([384, 128]) into transformer.h.1.attn.c_attn.weight
(Worker_PP1 pid=14460) DEBUG 12-06 20:13:12 [model_executor/models/utils.py:343] Loaded weight h.1.mlp.c_fc.weight with shape torch.Size([512, 128])
(Worker_PP1 pid=14460) DEBUG 12-06 20:13:12 [model_executor/models/utils.py:343] Loaded weight wte.weight with shape torch.Size([64, 128])
(Worker_PP0 pid=14459) DEBUG 12-06 20:13:12 [model_executor/layers/linear.py:1342] Loaded shard None with shape torch.Size([384]) into transformer.h.0.attn.c_attn.bias
(Worker_PP0 pid=14459) DEBUG 12-06 20:13:12 [model_executor/models/utils.py:343] Loaded weight h.0.ln_1.bias with shape torch.Size([128])
(Worker_PP0 pid=14459) INFO 12-06 20:13:12 [model_executor/models/utils.py:343] Loaded weight h.7.ln_1.bias, not at DEBUG
"""  # noqa: E501


def test_the_layers_each_worker_loaded_are_read_from_the_debug_log(tmp_path):
    assert layers_loaded(PIPELINE_DEBUG_LOG) == {"Worker_PP0": [0], "Worker_PP1": [1]}
    assert layers_loaded(KV_LOG) == {}
    llama = "(EngineCore pid=3) DEBUG 12-06 20:13:12 [utils.py:343] Loaded weight model.layers.11.mlp.up_proj.weight"
    assert layers_loaded(llama) == {"EngineCore": [11]}
    with pytest.raises(ServingConfigError, match="log_level must be None"):
        VLLMServer(write_config(tmp_path), log_level="debug", shared=False)
    assert VLLMServer(tmp_path, log_level="DEBUG", shared=False)._environment()["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_engine_steps_are_parsed_from_the_iteration_log():
    log = (
        "(APIServer pid=1024) INFO 11-23 11:50:08 [loggers.py:199] Engine 000: Iteration(7): 1 context requests, "
        "23 context tokens, 3 generation requests, 3 generation tokens, iteration elapsed time: 3.44 ms, "
        "CPU KV cache usage: 12.5%\n"
    )
    (step,) = parse_iterations(log)
    assert (step.index, step.requests, step.tokens, step.elapsed_ms, step.kv_cache_usage) == (7, 4, 26, 3.44, 0.125)


def test_explanations_restate_gib_in_tokens_and_bytes():
    text = explain(root_cause(KV_BUDGET_LOG), budget(2 * BLOCK))
    assert "524,288 bytes (256 tokens x 2,048 B)" in text and "leaving 262,144 bytes (128 tokens)" in text
    assert "needs 2 block(s) = 524,288 bytes" in text and "at least 786,432 bytes (kv_cache_tokens=384)" in text
    assert "position table (wpe) has 256 rows" in explain(root_cause(MAX_LEN_LOG), budget(BLOCK * 10))


METRICS_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",engine="0",num_gpu_blocks="10"} 1.0
"""


def test_metrics_text_is_parsed_with_prometheus_client():
    values = parse_metrics(METRICS_TEXT)
    assert values == {"vllm:num_requests_running": 3.0, "vllm:num_preemptions_total": 7.0}
    assert metric_labels(METRICS_TEXT, "vllm:cache_config_info")["num_gpu_blocks"] == "10"
    assert metric_labels(METRICS_TEXT, "absent") == {}


def test_count_starts_counts_the_logs_of_servers_that_started(tmp_path):
    """`make test` prints how many vLLM servers each phase started, from the logs the servers wrote."""
    from tinyformer.serving.vllm_log import START_LINE, count_starts

    (tmp_path / "a.log").write_text(f"(APIServer pid=7) INFO 12-06 02:00:00 [api_utils.py:327] {START_LINE} 0.32.0\n")
    (tmp_path / "b.log").write_text(f"INFO {START_LINE} 0.32.0, serving model micro\nKV cache size: 1,280 tokens\n")
    (tmp_path / "c.log").write_text("interrupted before vLLM logged a line of its own\n")
    assert count_starts(tmp_path) == 2
    assert count_starts(tmp_path / "missing") == 0
