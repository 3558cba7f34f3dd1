"""Speculative decoding in vLLM's engine, against the learner's engine on the same trace.

Two engines one after another, in vLLM's offline engine (vllm.LLM) in this process: one drafts with a small model,
one with vLLM's n-gram method. Both must give exactly the target's greedy tokens (the target alone:
``tinyformer.generate``, which vLLM without speculation matches, tests/test_serving_llama.py), and their acceptance
counters (the Prometheus text a server serves at /metrics) must equal the counts of ``SpeculativeEngine`` with the
same draft (or the same n-gram lookup) on the same prompts. Lesson 16 does the same through two real servers."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import noisy_copy, spread_weights, vllm_greedy

from tinyformer.config import ModelConfig
from tinyformer.engine import SpeculativeEngine
from tinyformer.engine.speculative import NgramProposer
from tinyformer.export import export_hf
from tinyformer.generate import generate
from tinyformer.model import Transformer
from tinyformer.serving import VLLMServer
from tinyformer.serving.metrics import counters_between, spec_decode_counters
from tinyformer.serving.offline import metrics_text, offline_llm
from tinyformer.tokenizer import build_tokenizer

K, MAX_NEW, NGRAM = 3, 24, dict(prompt_lookup_min=1, prompt_lookup_max=3)


def spread_llama(vocab_size: int, seed: int, n_layer: int = 2) -> Transformer:
    """A random nano llama with weights scaled up (best and second-best logits far apart): vLLM's kernels sum in
    another order than PyTorch, which must not flip a greedy choice (as in tests/test_serving_llama.py)."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset("nano", vocab_size=vocab_size, arch="llama", n_layer=n_layer))
    return spread_weights(model)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("speculative")
    target = spread_llama(len(tokenizer), seed=0)
    draft = noisy_copy(target, 0.4, seed=1)
    return target, draft, export_hf(target, tokenizer, folder / "target"), export_hf(draft, tokenizer, folder / "draft")


@pytest.fixture(scope="module")
def trace(exports):
    target = exports[0]
    rng = random.Random(24)
    prompts = [[rng.randrange(target.config.vocab_size) for _ in range(rng.randint(3, 30))] for _ in range(6)]
    return prompts, [generate(target, p, MAX_NEW).tokens[0] for p in prompts]


def our_engine(target, drafter) -> SpeculativeEngine:
    return SpeculativeEngine(
        target,
        drafter,
        num_speculative_tokens=K,
        num_blocks=40,
        block_size=16,
        max_num_seqs=8,
        max_num_batched_tokens=256,
    )


def vllm_speculating(target_dir, config: dict, prompts: list[list[int]]) -> tuple[list[list[int]], dict]:
    """vLLM's greedy tokens for every prompt (all at once) and what its speculative counters grew by."""
    args = ["--speculative-config", json.dumps(config), "--max-num-seqs", "8"]
    with offline_llm(target_dir, extra_args=args, log_stats=True) as llm:
        before = spec_decode_counters(metrics_text())
        tokens = vllm_greedy(llm, prompts, MAX_NEW)
        after = spec_decode_counters(metrics_text())
    return tokens, counters_between(before, after)


@pytest.mark.vllm
@pytest.mark.parametrize("name", ["draft model", "ngram"])
def test_vllm_speculates_to_the_targets_own_tokens_and_counts_as_our_engine(exports, trace, name):
    target, draft, target_dir, draft_dir = exports
    prompts, alone = trace
    configs = {
        "draft model": {"model": str(draft_dir), "num_speculative_tokens": K},
        "ngram": {"method": "ngram", "num_speculative_tokens": K, **NGRAM},
    }
    tokens, theirs = vllm_speculating(target_dir, configs[name], prompts)
    assert tokens == alone
    ours = our_engine(
        target,
        draft if name == "draft model" else NgramProposer(NGRAM["prompt_lookup_min"], NGRAM["prompt_lookup_max"]),
    )
    assert [o.tokens for o in ours.generate(prompts, MAX_NEW)] == alone
    assert theirs["num_draft_tokens"] > 0, "vLLM verified no draft tokens"
    assert theirs == ours.spec.as_vllm_counters()


def test_bad_speculative_configs_are_refused_before_starting(tmp_path):
    tokenizer = build_tokenizer()
    target_dir = export_hf(spread_llama(len(tokenizer), seed=0), tokenizer, tmp_path / "target")
    other_dir = shutil.copytree(target_dir, tmp_path / "other")  # a folder whose vocabulary is 8 tokens larger
    config = json.loads((other_dir / "config.json").read_text())
    (other_dir / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 8}))
    refusals = {
        "needs num_speculative_tokens, a whole number >= 1; got 0": {"method": "ngram", "num_speculative_tokens": 0},
        "with keys from": {"model": str(target_dir), "num_speculative_tokens": 2, "draft": "x"},
        "needs a draft model folder or method 'ngram'": {"method": "eagle", "num_speculative_tokens": 2},
        "must use the target's tokenizer": {"model": str(other_dir), "num_speculative_tokens": 2},
    }
    for message, config in refusals.items():
        with pytest.raises(ValueError, match=message):
            VLLMServer(target_dir, speculative_config=config, shared=False)
    server = VLLMServer(target_dir, speculative_config={"method": "ngram", "num_speculative_tokens": 2}, shared=False)
    assert server.command()[-2:] == ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}']
