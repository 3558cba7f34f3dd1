"""The model on an NVIDIA GPU: the same logits and tokens as on the CPU, and training works there.

Skipped without CUDA (CI has no GPU); run on a GPU machine with `pytest tests/test_gpu_path.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tinyformer import ModelConfig, Transformer, build_tokenizer
from tinyformer.data import Corpus, TokenStream
from tinyformer.generate import generate, generate_batch
from tinyformer.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)")


@pytest.fixture
def cpu_and_gpu_models():
    torch.manual_seed(0)
    cpu = Transformer(ModelConfig.preset("micro", vocab_size=64)).eval()
    return cpu, copy.deepcopy(cpu).cuda()


def test_forward_on_the_gpu_gives_the_cpus_logits(cpu_and_gpu_models):
    cpu, gpu = cpu_and_gpu_models
    ids = torch.randint(0, 64, (4, 200), generator=torch.Generator().manual_seed(1))  # [B, T]
    with torch.no_grad():
        expected = cpu(ids)  # [B, T, V]
        got = gpu(ids.cuda())  # [B, T, V], on the GPU
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)  # float32 on both; reduction order differs


def test_cached_generation_on_the_gpu_gives_the_cpus_tokens(cpu_and_gpu_models):
    cpu, gpu = cpu_and_gpu_models
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20]]
    assert generate(gpu, prompts[1], 40).tokens == generate(cpu, prompts[1], 40).tokens
    assert generate_batch(gpu, prompts, 20).tokens == generate_batch(cpu, prompts, 20).tokens
    sampled = [generate(m, prompts[0], 20, temperature=1.0, seed=3).tokens for m in (gpu, gpu)]
    assert sampled[0] == sampled[1]  # seeded sampling repeats on the GPU too


def test_training_on_the_gpu_learns_the_corpus():
    tokenizer = build_tokenizer()
    stream = TokenStream(Corpus(seed=0), tokenizer)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer))).cuda()
    before = evaluate(model, stream, context_len=64)
    result = train(model, stream, TrainConfig.for_preset("nano", steps=300), progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert result.val_loss[-1] < before - 1.0  # 300 SGD steps on the GPU: well below the untrained loss
