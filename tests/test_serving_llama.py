"""Llama exports run by vLLM's engine with its own Llama implementation: multi-head, grouped-query and
multi-query attention, the same size and the same KV budget.

Greedy tokens equal tinyformer's generate and the lesson-13 engine; the KV capacity vLLM reports grows by exactly
n_head / n_kv_head against multi-head attention, as vllm_rules (through KVBudget) predicts.

The three run one after another in vLLM's offline engine (vllm.LLM) in this process: the engine core and worker a
server runs, without its API process (1-3 s each once vLLM is imported; three servers took 20-25 CPU-seconds each).
Lesson 14 serves the same three kinds through real servers and checks their capacity lines; llama exports answer
HTTP requests in test_serving_structured.py and test_serving_lora.py."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from conftest import vllm_greedy

from tinyformer.config import ModelConfig
from tinyformer.engine import Engine
from tinyformer.export import export_hf
from tinyformer.generate import generate
from tinyformer.model import Transformer
from tinyformer.serving import KVBudget
from tinyformer.serving.offline import offline_llm, reported_kv
from tinyformer.serving.vllm_log import ReportedKV
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


def mha_budget_bytes(config: ModelConfig) -> int:
    """MHA_BLOCKS blocks of the multi-head model of this size, whatever this model's own n_kv_head."""
    mha = ModelConfig(**{**config.to_dict(), "n_kv_head": config.n_head})
    return MHA_BLOCKS * KVBudget(mha, max_model_len=mha.n_positions, kv_cache_bytes=0).bytes_per_block


def prompts_for(name: str, vocab_size: int) -> list[list[int]]:
    rng = random.Random(len(name))
    return [[rng.randrange(vocab_size) for _ in range(rng.randint(3, 40))] for _ in range(6)]


@dataclass
class Ran:
    """What vLLM's engine held and did for one export."""

    predicted: KVBudget  # what tinyformer predicts for this export and budget
    reported: ReportedKV  # the KV capacity vLLM reports
    implementation: str  # the module and class vLLM built the model from
    greedy: list[list[int]]  # the new tokens for prompts_for(name), all six requests at once


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The three llama exports, one per attention kind, each in vLLM's engine in turn."""
    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("llama")
    models, ran = {}, {}
    for seed, (name, n_kv_head) in enumerate(KV_HEADS.items()):
        models[name] = model = spread_llama(len(tokenizer), n_kv_head, seed)
        path = export_hf(model, tokenizer, folder / name)
        budget = mha_budget_bytes(model.config)
        with offline_llm(path, kv_cache_bytes=budget, extra_args=["--max-num-seqs", "8"]) as llm:
            (implementation,) = llm.apply_model(lambda m: f"{type(m).__module__}.{type(m).__name__}")
            ran[name] = Ran(
                predicted=KVBudget(model.config, max_model_len=model.config.n_positions, kv_cache_bytes=budget),
                reported=reported_kv(llm),
                implementation=implementation,
                greedy=vllm_greedy(llm, prompts_for(name, model.config.vocab_size), MAX_NEW),
            )
    return models, ran


@pytest.mark.vllm
def test_capacity_grows_by_the_group_size_as_predicted(ran):
    models, ran = ran
    mha = ran["mha"].reported
    for name, kind in ran.items():
        assert kind.reported.log_line() == kind.predicted.log_line()
        assert kind.reported.num_blocks == kind.predicted.num_blocks
        group = models[name].config.n_head // models[name].config.n_kv_head
        assert kind.reported.tokens == group * mha.tokens
        assert kind.reported.max_concurrency == pytest.approx(group * mha.max_concurrency)
    assert [kind.reported.log_line() for kind in ran.values()] == [
        "CPU KV cache size: 640 tokens, Maximum concurrency for 256 tokens per request: 2.50x",
        "CPU KV cache size: 1,280 tokens, Maximum concurrency for 256 tokens per request: 5.00x",
        "CPU KV cache size: 2,560 tokens, Maximum concurrency for 256 tokens per request: 10.00x",
    ]


@pytest.mark.vllm
def test_vllm_uses_its_own_llama_implementation(ran):
    _, ran = ran
    for kind in ran.values():  # with --model-impl transformers: vllm.model_executor.models.transformers...
        assert kind.implementation == "vllm.model_executor.models.llama.LlamaForCausalLM"


@pytest.mark.vllm
@pytest.mark.parametrize("name", KV_HEADS)
def test_greedy_tokens_equal_generate_and_the_engine(ran, name):
    models, ran = ran
    model, prompts = models[name], prompts_for(name, models[name].config.vocab_size)
    engine = Engine(model, num_blocks=12, block_size=16, max_num_seqs=8, max_num_batched_tokens=128)
    expected = [generate(model, p, MAX_NEW).tokens[0] for p in prompts]
    assert ran[name].greedy == expected
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] == expected
