"""tinyformer.memory: byte formulas checked against hand-computed and documented values,
and against bytes measured on this machine."""

from __future__ import annotations

import math

import pytest

from tinyformer import memory

# ---- KV cache: bytes per token and vLLM's capacity ------------------------------------------------


def test_kv_bytes_per_token_gpt2_style_is_2_x_layers_x_embd_x_dtype():
    # micro preset: n_layer 2, n_embd 128 = 4 heads x 32, fp32 -> 2 x 2 x 128 x 4
    assert memory.kv_bytes_per_token(2, 4, 32, "fp32") == 2048
    assert memory.kv_bytes_per_token(2, 4, 32, 4) == 2048


def test_kv_bytes_per_token_uses_kv_heads_not_query_heads():
    # Llama-3.1-8B: 32 layers, 8 KV heads of 128 (32 query heads), bf16 -> 128 KiB per token
    assert memory.kv_bytes_per_token(32, 8, 128, "bf16") == 131072


def test_kv_bytes_per_token_splits_heads_across_tensor_parallel_ranks_and_replicates_below_one():
    assert memory.kv_bytes_per_token(2, 4, 32, "fp32", tensor_parallel_size=2) == 1024
    # 8 KV heads on 16 ranks: each rank still keeps one whole head (vLLM replicates it)
    assert memory.kv_bytes_per_token(32, 8, 128, "bf16", tensor_parallel_size=16) == 2 * 32 * 1 * 128 * 2


def test_vllm_kv_capacity_matches_the_line_the_cpu_server_logged():
    # docs/vllm-on-cpu.md: --kv-cache-memory-bytes 2621440, micro model fp32, max_model_len 256
    cap = memory.vllm_kv_capacity(2_621_440, memory.kv_bytes_per_token(2, 4, 32, "fp32"), 128, 256)
    assert (cap.num_blocks, cap.tokens, cap.max_concurrency) == (10, 1280, 5.0)
    assert cap.log_line("CPU") == (
        "CPU KV cache size: 1,280 tokens, Maximum concurrency for 256 tokens per request: 5.00x"
    )
    # --tensor-parallel-size 2, same bytes per worker: half the heads per worker -> twice the tokens
    tp2 = memory.vllm_kv_capacity(2_621_440, memory.kv_bytes_per_token(2, 4, 32, "fp32", 2), 128, 256)
    assert (tp2.tokens, tp2.max_concurrency) == (2560, 10.0)


def test_kv_cache_tokens_rounds_down_to_whole_blocks():
    per_block = 128 * 2048
    assert memory.kv_cache_tokens(10 * per_block + per_block - 1, 2048, 128) == 1280
    assert memory.kv_cache_tokens(per_block - 1, 2048, 128) == 0


def test_reported_tokens_follow_vllm_when_max_model_len_is_not_a_block_multiple():
    # 10 blocks; a 200-token request needs 2 blocks -> 5.0x -> vLLM prints int(5.0 x 200) = 1000 tokens
    cap = memory.vllm_kv_capacity(10 * 128 * 2048, 2048, 128, 200)
    assert (cap.blocks_per_request, cap.max_concurrency, cap.tokens) == (2, 5.0, 1000)
    assert memory.kv_cache_tokens(10 * 128 * 2048, 2048, 128, max_model_len=200) == 1000


@pytest.mark.parametrize(
    "call",
    [
        lambda: memory.kv_bytes_per_token(0, 4, 32, 4),
        lambda: memory.kv_bytes_per_token(2, 4, 32, "fp12"),
        lambda: memory.kv_cache_tokens(-1, 2048, 128),
        lambda: memory.vllm_kv_capacity(1, 2048, 128, 0),
    ],
)
def test_bad_sizes_raise_a_clear_value_error(call):
    with pytest.raises(ValueError, match="must be|unknown dtype"):
        call()


# ---- weights and score matrix ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected"), [("fp32", 400), ("bf16", 200), ("fp16", 200), ("fp8", 100), ("int8", 100), ("int4", 50)]
)
def test_weight_bytes_by_dtype(dtype, expected):
    assert memory.weight_bytes(100, dtype) == expected


def test_score_matrix_bytes_grow_as_n_squared():
    assert memory.attention_scores_bytes(1024, 12, batch=2, dtype="fp16") == 2 * 12 * 1024 * 1024 * 2
    assert memory.attention_scores_bytes(2048, 1) == 4 * memory.attention_scores_bytes(1024, 1)


# ---- real models, GPUs, serving plans ----------------------------------------------------------------


def test_parameter_counts_from_the_sizes_equal_the_published_counts():
    for spec in memory.real_models().values():
        assert spec.n_params == spec.n_params_published, spec.name


def test_tinyformer_spec_counts_the_same_parameters_as_the_model():
    import torch

    from tinyformer import ModelConfig, Transformer

    torch.manual_seed(0)
    config = ModelConfig.preset("micro", vocab_size=60)
    spec = memory.ModelSpec.from_tinyformer(config)
    assert spec.n_params == Transformer(config).num_parameters()
    assert spec.kv_bytes_per_token("fp32") == 2048


def test_gpt2_spec_becomes_a_tinyformer_config_of_the_same_parameters():
    from tinyformer import ModelConfig

    gpt2 = memory.find_model("openai-community/gpt2")
    config = gpt2.to_tinyformer()
    # GPT-2 small's sizes, read from the catalogue (rejects a field copied to the wrong place)
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size, config.n_positions) == (
        12, 768, 12, 50257, 1024,
    )  # fmt: skip
    assert memory.ModelSpec.from_tinyformer(config).n_params == gpt2.n_params_published == 124_439_808
    micro = ModelConfig.preset("micro", vocab_size=60)
    assert memory.ModelSpec.from_tinyformer(micro).to_tinyformer() == micro  # the inverse of from_tinyformer


def test_a_spec_that_is_not_gpt2_shaped_is_refused_with_what_differs():
    with pytest.raises(ValueError, match=r"not GPT-2-shaped.*n_kv_heads=8.*mlp='gated'.*openai-community/gpt2"):
        memory.find_model("meta-llama/Llama-3.2-1B").to_tinyformer()


def test_quantised_weights_keep_embeddings_in_16_bits():
    llama = memory.real_models()["Llama-3.1-8B"]
    bf16 = memory.model_weight_bytes(llama, "bf16")
    int4 = memory.model_weight_bytes(llama, "int4")
    assert bf16 == 2 * llama.n_params
    embeddings_and_norms = llama.embedding_params + (2 * llama.n_layer + 1) * llama.norm_params
    # int4 in groups of 128 with an fp16 scale and a 4-bit zero point per group: 0.5 + 2.5 / 128 bytes per weight
    quantised = llama.n_params - embeddings_and_norms
    assert int4 == math.ceil(quantised * (0.5 + 2.5 / 128)) + 2 * embeddings_and_norms
    assert int4 > quantised // 2 + 2 * embeddings_and_norms  # more than the idealised quarter of bf16


def test_gpu_plan_reproduces_a_published_vllm_memory_profile_within_2_percent():
    # A vLLM start-up log (Llama-3-8B, H100, utilisation 0.90) reported: total 79.22 GiB, weights 14.96 GiB,
    # non-torch 1.79 GiB, activation peak 1.26 GiB -> available_kv_cache_memory 53.29 GiB.
    h100 = memory.GPU("H100 (log)", int(79.22 * memory.GiB), 9.0)
    plan = memory.plan_serving("Llama-3.1-8B", h100, gpu_memory_utilization=0.9, max_model_len=8192)
    assert plan.weights_on_gpu / memory.GiB == pytest.approx(14.96, abs=0.01)
    assert plan.kv_budget / memory.GiB == pytest.approx(53.29, rel=0.02)
    assert plan.ok and plan.capacity.tokens == plan.capacity.num_blocks * 16


def test_cpu_plan_is_the_exact_documented_capacity():
    from tinyformer import ModelConfig

    spec = memory.ModelSpec.from_tinyformer(ModelConfig.preset("micro", vocab_size=60))
    plan = memory.plan_serving(spec, None, dtype="fp32", kv_cache_memory_bytes=2_621_440, max_model_len=256)
    assert plan.message == "CPU KV cache size: 1,280 tokens, Maximum concurrency for 256 tokens per request: 5.00x"
    # 2 blocks look like one 256-token request, but vLLM keeps one back (the null block): 1 usable < 2 needed.
    short = memory.plan_serving(spec, None, dtype="fp32", kv_cache_memory_bytes=2 * 128 * 2048, max_model_len=256)
    assert not short.ok and short.capacity is None and short.status == "max_model_len_too_long"
    assert "estimated maximum model length is 128" in short.message and "524,288 available" in short.message
    one_block = memory.plan_serving(spec, None, dtype="fp32", kv_cache_memory_bytes=128 * 2048, max_model_len=256)
    assert one_block.status == "no_kv_memory" and "No available memory for the cache blocks" in one_block.message
    assert memory.plan_serving(spec, None, dtype="fp32", kv_cache_memory_bytes=3 * 128 * 2048, max_model_len=256).ok


def test_weights_that_do_not_fit_fail_whatever_max_model_len_and_the_fix_is_not_max_model_len():
    for max_model_len in (1024, 131072):
        plan = memory.plan_serving("Llama-3.1-70B", "H100 80 GB", max_model_len=max_model_len)
        assert plan.status == "weights_dont_fit"
        assert "out of memory" in plan.message
    found = memory.fixes(plan)
    assert found and all("--max-model-len" not in fix.change for fix in found)
    assert all(fix.plan.ok for fix in found)


def test_kv_shortage_cheapest_fix_is_the_max_model_len_vllm_estimates():
    plan = memory.plan_serving("Llama-3.1-8B", "L4 24 GB")  # default max_model_len 131072
    assert plan.status == "max_model_len_too_long"
    fits = (memory.kv_cache_blocks(plan.kv_budget, plan.bytes_per_token, 16) - 1) * 16  # less the null block
    assert f"estimated maximum model length is {fits}" in plan.message
    fix = memory.cheapest_fix(plan)
    assert fix.change == f"--max-model-len {fits}" and fix.plan.ok and fix.plan.capacity.max_concurrency >= 1


def test_tensor_parallelism_splits_weights_and_kv_heads():
    one = memory.plan_serving("Llama-3.1-8B", "A100 40 GB", max_model_len=8192)
    two = memory.plan_serving("Llama-3.1-8B", "A100 40 GB", max_model_len=8192, tensor_parallel_size=2)
    assert two.weights_on_gpu == one.weights_on_gpu // 2 and two.bytes_per_token == one.bytes_per_token // 2
    assert two.capacity.tokens > 2 * one.capacity.tokens  # twice the heads' room and less weight per GPU
    bad = memory.plan_serving("Llama-3.1-8B", "A100 40 GB", tensor_parallel_size=3)
    assert bad.status == "bad_tensor_parallel_size" and "divisible" in bad.message


def test_cpu_offload_moves_weights_off_the_gpu_at_a_pcie_cost():
    plan = memory.plan_serving("Llama-3.1-8B", "L4 24 GB", max_model_len=8192, cpu_offload_gb=4)
    assert plan.offloaded == 4 * memory.GiB
    assert plan.offload_seconds_per_step == pytest.approx(4 * memory.GiB / 32e9)


def test_t4_has_no_bf16_and_the_fix_says_float16():
    plan = memory.plan_serving("Llama-3.2-1B", "T4 16 GB", max_model_len=4096)
    assert plan.status == "dtype_unsupported" and "--dtype=half" in plan.message
    assert memory.cheapest_fix(plan).change == "--dtype float16"


def test_max_model_len_above_the_position_table_is_refused_like_vllm():
    plan = memory.plan_serving("GPT-2 (124M)", "T4 16 GB", dtype="fp16", max_model_len=2048)
    assert plan.status == "max_model_len_above_model" and "max_position_embeddings=1024" in plan.message


def test_unknown_names_say_what_exists():
    with pytest.raises(ValueError, match="choose one of"):
        memory.plan_serving("GPT-5", "T4 16 GB")
    with pytest.raises(ValueError, match="kv_cache_memory_bytes"):
        memory.plan_serving("GPT-2 (124M)", None)
