"""Llama exports served by the real vLLM with its own Llama implementation: multi-head, grouped-query and
multi-query attention side by side, the same size and the same KV budget.

Greedy tokens equal tinyformer's generate and the lesson-13 engine; the capacity line vLLM logs grows by exactly
n_head / n_kv_head against multi-head attention, as vllm_rules (through KVBudget) predicts."""

from __future__ import annotations

import random

import pytest
import torch

from tinyformer.config import ModelConfig
from tinyformer.engine import Engine
from tinyformer.export import export_hf
from tinyformer.generate import generate
from tinyformer.model import Transformer
from tinyformer.serving import KVBudget, VLLMServer, run_load
from tinyformer.tokenizer import build_tokenizer

KV_HEADS = {"mha": 4, "gqa": 2, "mqa": 1}  # of micro's 4 query heads (head_dim 32)
MHA_BLOCKS = 5  # the budget holds 5 blocks of 128 tokens for multi-head attention: 2.50 requests of 256 tokens
MAX_NEW = 12


def spread_llama(vocab_size: int, n_kv_head: int, seed: int) -> Transformer:
    """A random micro llama with weights scaled up so that the best and second-best logits lie far apart: vLLM's
    kernels sum in another order than PyTorch, which must not flip a greedy choice."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset("micro", vocab_size=vocab_size, arch="llama", n_kv_head=n_kv_head))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(40.0 / p.shape[1] ** 0.5)
    return model.eval()


def kv_budget_bytes(config: ModelConfig) -> int:
    """MHA_BLOCKS blocks of the multi-head model of this size, whatever this model's own n_kv_head."""
    mha = ModelConfig(**{**config.to_dict(), "n_kv_head": config.n_head})
    return MHA_BLOCKS * KVBudget(mha, max_model_len=mha.n_positions, kv_cache_bytes=0).bytes_per_block


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three llama exports, one per attention kind, served side by side (starts run in parallel)."""
    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("llama")
    models, servers = {}, {}
    for seed, (name, n_kv_head) in enumerate(KV_HEADS.items()):
        models[name] = spread_llama(len(tokenizer), n_kv_head, seed)
        path = export_hf(models[name], tokenizer, folder / name)
        servers[name] = VLLMServer(
            path, kv_cache_bytes=kv_budget_bytes(models[name].config), max_num_seqs=8, shared=False, progress=False
        )
    starts = [server.start_in_background() for server in servers.values()]
    try:
        for start in starts:
            start.result()
        yield models, servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.vllm
@pytest.mark.slow
def test_capacity_grows_by_the_group_size_as_predicted(served):
    models, servers = served
    reported = {name: server.reported for name, server in servers.items()}
    for name, server in servers.items():
        assert reported[name] is not None, f"vLLM did not log its KV cache size; see {server.log_path}"
        assert reported[name].log_line() == server.predicted.log_line()
        assert reported[name].num_blocks in (None, server.predicted.num_blocks)
    for name, model in models.items():
        group = model.config.n_head // model.config.n_kv_head
        assert reported[name].tokens == group * reported["mha"].tokens
        assert reported[name].max_concurrency == pytest.approx(group * reported["mha"].max_concurrency)
    assert [r.log_line() for r in reported.values()] == [
        "CPU KV cache size: 640 tokens, Maximum concurrency for 256 tokens per request: 2.50x",
        "CPU KV cache size: 1,280 tokens, Maximum concurrency for 256 tokens per request: 5.00x",
        "CPU KV cache size: 2,560 tokens, Maximum concurrency for 256 tokens per request: 10.00x",
    ]


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_uses_its_own_llama_implementation(served):
    _, servers = served
    for server in servers.values():
        # With --model-impl transformers this line names TransformersForCausalLM instead.
        assert "Resolved architecture: LlamaForCausalLM" in server.log_text()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("name", KV_HEADS)
def test_greedy_tokens_equal_generate_and_the_engine(served, name):
    models, servers = served
    model = models[name]
    rng = random.Random(len(name))
    prompts = [[rng.randrange(model.config.vocab_size) for _ in range(rng.randint(3, 40))] for _ in range(6)]
    load = run_load(servers[name], prompts, concurrency=len(prompts), max_tokens=MAX_NEW, ignore_eos=True)
    engine = Engine(model, num_blocks=12, block_size=16, max_num_seqs=8, max_num_batched_tokens=128)
    expected = [generate(model, p, MAX_NEW).tokens[0] for p in prompts]
    assert [r.token_ids for r in load.replies] == expected
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] == expected
