"""Bytes measured on this machine (torch.profiler on CPU, torch.cuda on GPU) against tinyformer.memory's formulas."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from tinyformer import ModelConfig, Transformer, memory
from tinyformer.generate import generate

SHAPES = [(256, 2, 1), (512, 4, 2), (1024, 8, 1), (768, 3, 3)]  # (n, heads, batch)


@pytest.mark.parametrize(("n", "heads", "batch"), SHAPES)
def test_naive_attention_materialises_the_score_matrix_the_formula_predicts(n, heads, batch):
    measured = memory.measure_attention("naive", n, heads, batch, head_dim=32, device="cpu")
    scores = measured.peak_bytes - measured.retained_bytes  # the peak minus the output it returns
    assert scores == pytest.approx(memory.attention_scores_bytes(n, heads, batch, "fp32"), rel=0.02)


@pytest.mark.parametrize(("n", "heads", "batch"), SHAPES)
def test_fused_attention_never_holds_the_score_matrix(n, heads, batch):
    fused = memory.measure_attention("fused", n, heads, batch, head_dim=32, device="cpu")
    assert fused.peak_bytes < memory.attention_scores_bytes(n, heads, batch, "fp32") / 2


def test_fused_attention_memory_grows_linearly_while_naive_grows_quadratically():
    naive = [memory.measure_attention("naive", n, 4, device="cpu").peak_bytes for n in (512, 2048)]
    fused = [memory.measure_attention("fused", n, 4, device="cpu").peak_bytes for n in (512, 2048)]
    assert naive[1] / naive[0] > 12  # 4x the tokens: ~16x the bytes
    assert fused[1] / fused[0] < 6  # ~4x (output and per-block buffers)


def test_naive_and_fused_attention_compute_the_same_thing():
    q, k, v = memory.attention_inputs(2, 3, 100, 16)
    for causal in (False, True):
        torch.testing.assert_close(
            memory.naive_attention(q, k, v, causal), memory.fused_attention(q, k, v, causal), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize(("preset", "batch", "seq_len"), [("nano", 1, 64), ("nano", 4, 128), ("micro", 2, 256)])
def test_forward_pass_activation_formula_matches_the_measured_peak(preset, batch, seq_len):
    torch.manual_seed(0)
    config = ModelConfig.preset(preset, vocab_size=60)
    model = Transformer(config).eval()
    ids = torch.randint(0, 60, (batch, seq_len))
    with torch.inference_mode():
        measured, _ = memory.peak_bytes(model, ids, device="cpu")
    predicted = memory.forward_activation_bytes(batch, seq_len, config.n_embd, config.n_head, config.n_layer, 60)
    assert measured.peak_bytes == pytest.approx(predicted, rel=0.05)


@pytest.mark.parametrize(("prompts", "new_tokens"), [([[5, 6, 7, 8]], 10), ([[5, 6, 7], [9, 10, 11]], 6)])
def test_kv_cache_of_generate_holds_exactly_the_formula_bytes(prompts, new_tokens):
    torch.manual_seed(0)
    config = ModelConfig.preset("micro", vocab_size=60)
    model = Transformer(config).eval()
    result = generate(model, prompts, new_tokens, use_cache=True)
    cache = result.cache
    # the prompt, then every new token but the last is fed back: prompt + new - 1 positions cached
    assert len(cache) == len(prompts[0]) + new_tokens - 1
    expected = memory.kv_cache_bytes(
        len(cache), config.n_layer, config.n_head, config.head_dim, "fp32", batch=len(prompts)
    )
    assert cache.nbytes == expected
    assert memory.storage_bytes(cache.keys + cache.values) == expected  # nothing else kept alive


def test_kv_cache_grows_by_one_token_per_step():
    torch.manual_seed(0)
    config = ModelConfig.preset("nano", vocab_size=60)
    model = Transformer(config).eval()
    sizes = []
    generate(model, [[5, 6, 7]], 5, on_step=lambda step, cache: sizes.append(cache.nbytes))
    per_token = memory.kv_bytes_per_token(config.n_layer, config.n_head, config.head_dim, "fp32")
    assert [b - a for a, b in pairwise(sizes)] == [per_token] * 4


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1024, 4096])
def test_on_cuda_naive_scores_match_the_formula_and_fused_stays_small(n):
    naive = memory.measure_attention("naive", n, 8, 1, 64, "fp16", device="cuda")
    fused = memory.measure_attention("fused", n, 8, 1, 64, "fp16", device="cuda")
    scores = memory.attention_scores_bytes(n, 8, 1, "fp16")
    assert naive.peak_bytes - naive.retained_bytes == pytest.approx(scores, rel=0.02)
    assert fused.peak_bytes < scores / 4
