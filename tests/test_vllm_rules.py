"""vLLM's rules (tinyformer.vllm_rules) as one table of cases, each row checked against vLLM's own engine.

Each row is a KV budget for the ``micro`` model (2 layers, width 128: 2,048 bytes per token in fp32, one
128-token CPU block = 262,144 bytes) and what vLLM 0.32 does with it: the capacity line it logs, or its
refusal. The pure test checks the prediction for every row; the ``vllm`` tests build vLLM's engine with every
one-worker row and compare the capacity it holds, or the error it raises, with the same prediction.
"""

from __future__ import annotations

import pytest
import torch

from tinyformer import ModelConfig, Transformer, build_tokenizer, memory, vllm_rules
from tinyformer.export import export_hf
from tinyformer.serving import KVBudget, kv_bytes_per_token
from tinyformer.serving.offline import offline_llm, reported_kv
from tinyformer.widgets.budget import CPU_BACKEND, TINY_MODEL, BudgetCalculator

MICRO = ModelConfig(vocab_size=55, n_positions=256, n_embd=128, n_layer=2, n_head=4)
PER_TOKEN = 2048  # 2 (K, V) x 2 layers x 128 x 4 bytes
BLOCK = 128 * PER_TOKEN

# (id, kv bytes per worker, max_model_len, block_size, tensor_parallel, vLLM's capacity line)
CAPACITY = [
    (
        "ten blocks (facts file)",
        10 * BLOCK,
        256,
        128,
        1,
        "1,280 tokens, Maximum concurrency for 256 tokens per request: 5.00x",
    ),
    (
        "ten blocks, tp 2 (facts file)",
        10 * BLOCK,
        256,
        128,
        2,
        "2,560 tokens, Maximum concurrency for 256 tokens per request: 10.00x",
    ),
    (
        "7 blocks + spare, partial last block",
        7 * BLOCK + 12_345,
        200,
        128,
        1,
        "700 tokens, Maximum concurrency for 200 tokens per request: 3.50x",
    ),
    (
        "blocks of 32, max_model_len 100",
        10 * 32 * PER_TOKEN + 5,
        100,
        32,
        1,
        "250 tokens, Maximum concurrency for 100 tokens per request: 2.50x",
    ),
    (
        "three blocks: least for 256",
        3 * BLOCK,
        256,
        128,
        1,
        "384 tokens, Maximum concurrency for 256 tokens per request: 1.50x",
    ),
]
CAPACITY = [(*row[:-1], "CPU KV cache size: " + row[-1]) for row in CAPACITY]

# (id, kv bytes per worker, max_model_len, block_size) -> (kind, start of vLLM's message)
REFUSALS = [
    ("one block: only the null block", BLOCK, 256, 128, "no_kv_memory", "No available memory for the cache blocks."),
    (
        "1.5 blocks: half a usable block",
        BLOCK + BLOCK // 2,
        256,
        128,
        "max_model_len_too_long",
        "To serve at least one request with the model's max seq len (256), (0.0 GiB KV cache is needed, which is "
        "larger than the available KV cache memory (0.0 GiB). Try increasing",
    ),
    (
        "two blocks: 1 usable < 2 needed (issue 11)",
        2 * BLOCK,
        256,
        128,
        "max_model_len_too_long",
        "To serve at least one request with the model's max seq len (256), (0.0 GiB KV cache is needed, which is "
        "larger than the available KV cache memory (0.0 GiB). Based on the available memory, the estimated maximum "
        "model length is 128. Try increasing",
    ),
]


@pytest.mark.parametrize("name, kv_bytes, max_model_len, block_size, tp, line", CAPACITY, ids=[r[0] for r in CAPACITY])
def test_capacity_line_is_predicted(name, kv_bytes, max_model_len, block_size, tp, line):
    per_token = vllm_rules.kv_bytes_per_token(MICRO.n_layer, MICRO.n_head, MICRO.head_dim, "fp32", tp)
    assert vllm_rules.vllm_kv_capacity(kv_bytes, per_token, block_size, max_model_len).log_line("cpu") == line
    assert vllm_rules.kv_budget_refusal(kv_bytes, per_token, block_size, max_model_len) is None
    budget = KVBudget(MICRO, max_model_len, kv_bytes, tensor_parallel_size=tp, block_size=block_size)
    assert budget.log_line() == line  # the serving lessons' KVBudget says the same
    assert budget.num_blocks == kv_bytes // (block_size * PER_TOKEN // tp)  # each worker holds 1/tp of the heads


@pytest.mark.parametrize(
    "name, kv_bytes, max_model_len, block_size, kind, says", REFUSALS, ids=[r[0] for r in REFUSALS]
)  # noqa: E501
def test_refusal_is_predicted_in_vllms_words(name, kv_bytes, max_model_len, block_size, kind, says):
    refusal = vllm_rules.kv_budget_refusal(kv_bytes, PER_TOKEN, block_size, max_model_len)
    assert refusal is not None and refusal.kind == kind and refusal.vllm_says.startswith(says)


def test_max_model_len_above_the_position_table_is_refused_in_vllms_words():
    assert vllm_rules.max_model_len_refusal(256, 256) is None
    refusal = vllm_rules.max_model_len_refusal(512, 256)
    assert refusal.vllm_says == (
        "User-specified max_model_len (512) is greater than the derived max_model_len "
        "(max_position_embeddings=256.0 or model_max_length=None in model's config.json)."
    )


def test_the_null_block_is_why_two_blocks_do_not_serve_one_two_block_request():
    capacity = vllm_rules.vllm_kv_capacity(2 * BLOCK, PER_TOKEN, 128, 256)
    assert (capacity.num_blocks, capacity.usable_blocks, capacity.blocks_per_request) == (2, 1, 2)
    assert capacity.max_concurrency == 1.0  # what vLLM would report if it started: the null block is counted
    assert vllm_rules.kv_cache_bytes_needed(256, PER_TOKEN, 128) == 3 * BLOCK
    assert vllm_rules.estimated_max_model_len(2 * BLOCK, PER_TOKEN, 128, 256) == 128


def test_gpu_planner_refuses_what_vllm_refuses():
    # issue 11: the planner called 2 blocks "OK at 1.00x"; vLLM keeps one block back and refuses.
    spec = memory.ModelSpec.from_tinyformer(MICRO)
    plan = memory.plan_serving(spec, None, dtype="fp32", kv_cache_memory_bytes=2 * 128 * 2048, max_model_len=256)
    assert not plan.ok and plan.status == "max_model_len_too_long"
    assert REFUSALS[2][5] in plan.message


def test_block_sizes_head_sizes_and_tensor_parallel_rules():
    assert vllm_rules.BLOCK_SIZE == {"cpu": 128, "cuda": 16}
    assert vllm_rules.block_size_supported(32) and vllm_rules.block_size_supported(96)
    assert not vllm_rules.block_size_supported(16) and vllm_rules.block_size_supported(16, "cuda")
    assert vllm_rules.head_size_supported(32) and not vllm_rules.head_size_supported(16)
    assert vllm_rules.head_size_supported(16, "cuda")
    assert vllm_rules.tensor_parallel_refusal(4, 2) is None
    assert vllm_rules.tensor_parallel_refusal(4, 3).vllm_says.startswith("Total number of attention heads (4)")
    assert vllm_rules.bytes_for_tokens(129, PER_TOKEN, 128) == 2 * BLOCK
    assert vllm_rules.bytes_for_tokens(129, PER_TOKEN, 128, null_block=True) == 3 * BLOCK


def test_one_bytes_per_token_formula():
    # The planner's ModelSpec and the serving lessons' ModelConfig adapter call the one formula.
    spec = memory.ModelSpec.from_tinyformer(MICRO)
    assert memory.kv_bytes_per_token is vllm_rules.kv_bytes_per_token
    for tp in (1, 2, 4):
        formula = vllm_rules.kv_bytes_per_token(2, 4, 32, "fp32", tp)
        assert spec.kv_bytes_per_token("fp32", tp) == kv_bytes_per_token(MICRO, "float32", tp) == formula
    assert vllm_rules.kv_bytes_per_token(2, 4, 32, "fp32", 1) == PER_TOKEN  # 2 x 2 layers x 4 heads x 32 x 4 B


# ----- against vLLM's own engine ----------------------------------------------------------------------
# Every row with one worker, in vLLM's offline engine (vllm.LLM) in this process: the engine core and CPU worker a
# server runs, minus its API process; each costs 1-3 s once vLLM is imported, a server start 20-25 CPU-seconds. The
# server's side of the same rules (its log line and /metrics, its refusal in its log) is checked by
# test_serving_server.py (test_reported_kv_capacity_is_the_prediction, the "vLLM rejects the KV budget" cycle) and
# by lesson 08.


@pytest.fixture(scope="module")
def micro_export(tmp_path_factory):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = ModelConfig.preset("micro", vocab_size=len(tokenizer))
    assert (config.n_layer, config.n_embd, config.n_positions) == (MICRO.n_layer, MICRO.n_embd, MICRO.n_positions)
    return export_hf(Transformer(config).eval(), tokenizer, tmp_path_factory.mktemp("rules") / "micro")


def micro_engine(export, kv_bytes, max_model_len, block_size):
    """vLLM's engine for one row of the table: micro in fp32 with the row's budget, vLLM alone deciding."""
    budget = {"max_model_len": max_model_len, "kv_cache_bytes": kv_bytes, "block_size": block_size}
    return offline_llm(export, dtype="float32", check=False, **budget)


@pytest.mark.vllm
@pytest.mark.parametrize("row", [r[0] for r in CAPACITY if r[4] == 1])
def test_vllms_engine_holds_the_predicted_capacity(row, micro_export):
    _, kv_bytes, max_model_len, block_size, _, line = next(r for r in CAPACITY if r[0] == row)
    with micro_engine(micro_export, kv_bytes, max_model_len, block_size) as llm:
        reported = reported_kv(llm)
    assert reported.log_line() == line
    assert reported.num_blocks == kv_bytes // (block_size * PER_TOKEN)


@pytest.mark.vllm
@pytest.mark.parametrize("row", [r[0] for r in REFUSALS])
def test_vllms_engine_refuses_in_the_predicted_words(row, micro_export):
    _, kv_bytes, max_model_len, block_size, _, says = next(r for r in REFUSALS if r[0] == row)
    with pytest.raises(ValueError) as error, micro_engine(micro_export, kv_bytes, max_model_len, block_size):
        pass
    predicted = vllm_rules.kv_budget_refusal(kv_bytes, PER_TOKEN, block_size, max_model_len)
    assert str(error.value).startswith(says), error.value
    assert predicted.vllm_says in str(error.value)  # the whole predicted message, word for word


def test_budget_calculator_shows_a_row_checked_against_vllm():
    """The widget's numbers are the planner's, and the planner's are vLLM's (row: 7 blocks + spare bytes)."""
    _, kv_bytes, max_model_len, _, _, line = CAPACITY[2]
    calculator = BudgetCalculator(
        model=TINY_MODEL, gpu=CPU_BACKEND, dtype="fp32", max_model_len=256, kv_cache_memory_bytes=kv_bytes
    )
    calculator.max_model_len.options = [*calculator.max_model_len.options, max_model_len]
    calculator.max_model_len.value = max_model_len
    plan = calculator.plan()
    assert plan.ok and plan.message == line
    assert f'data-tokens="{plan.capacity.tokens}"' in calculator.numbers.value
