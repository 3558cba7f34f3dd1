"""The budget calculator's prediction for the tiny model on CPU against a real vLLM server's own report."""

from __future__ import annotations

import pytest
import torch

from tinyformer import ModelConfig, Transformer, build_tokenizer, memory
from tinyformer.export import export_hf
from tinyformer.widgets.budget import CPU_BACKEND, TINY_MODEL, BudgetCalculator


@pytest.mark.vllm
@pytest.mark.slow
def test_calculator_predicts_the_kv_tokens_the_real_cpu_server_reports(tmp_path):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = ModelConfig.preset("micro", vocab_size=len(tokenizer))
    export_dir = export_hf(Transformer(config).eval(), tokenizer, tmp_path / "micro")

    # Not round numbers on purpose: 7 blocks and some spare bytes, and a max_model_len that is not a
    # multiple of the 128-token block, so the prediction must follow vLLM's rounding exactly.
    bytes_per_block = memory.CPU_BLOCK_SIZE * memory.kv_bytes_per_token(
        config.n_layer, config.n_head, config.head_dim, "fp32"
    )
    kv_bytes, max_model_len = 7 * bytes_per_block + 12_345, 200
    calculator = BudgetCalculator(
        model=TINY_MODEL, gpu=CPU_BACKEND, dtype="fp32", max_model_len=256, kv_cache_memory_bytes=kv_bytes
    )
    calculator.max_model_len.options = [*calculator.max_model_len.options, max_model_len]
    calculator.max_model_len.value = max_model_len
    predicted = calculator.plan()
    assert predicted.ok and predicted.capacity.tokens == 700  # 7 blocks / 2 per request = 3.5x, x 200 tokens

    from tinyformer.serving import VLLMServer

    with VLLMServer(
        export_dir, max_model_len=max_model_len, kv_cache_bytes=kv_bytes, dtype="float32", progress=False, shared=False
    ) as server:
        reported = server.reported
    assert reported is not None, "vLLM did not log its KV cache size"
    assert reported.device == "CPU"
    assert reported.tokens == predicted.capacity.tokens
    assert reported.max_concurrency == round(predicted.capacity.max_concurrency, 2)
    assert f'data-tokens="{reported.tokens}"' in calculator.numbers.value
