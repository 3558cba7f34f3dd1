"""Speculative decoding on the real vLLM server, against the learner's engine on the same trace.

Two servers side by side (their starts overlap): one drafts with a small model, one with vLLM's n-gram method.
Both must give exactly the target's greedy tokens (the target alone: ``tinyformer.generate``, which vLLM without
speculation matches, tests/test_serving_llama.py), and their acceptance counters in /metrics must equal the counts
of ``SpeculativeEngine`` with the same draft (or the same n-gram lookup) on the same prompts."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import noisy_copy, spread_weights

from tinyformer.config import ModelConfig
from tinyformer.engine import SpeculativeEngine
from tinyformer.engine.speculative import NgramProposer
from tinyformer.export import export_hf
from tinyformer.generate import generate
from tinyformer.model import Transformer
from tinyformer.serving import VLLMServer, run_load
from tinyformer.serving.metrics import counters_between, scrape, spec_decode_counters
from tinyformer.tokenizer import build_tokenizer

K, MAX_NEW, NGRAM = 3, 24, dict(prompt_lookup_min=1, prompt_lookup_max=3)


def spread_llama(vocab_size: int, seed: int, n_layer: int = 2) -> Transformer:
    """A random nano llama with weights scaled up (best and second-best logits far apart): vLLM's kernels sum in
    another order than PyTorch, which must not flip a greedy choice (as in tests/test_serving_llama.py)."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.preset("nano", vocab_size=vocab_size, arch="llama", n_layer=n_layer))
    return spread_weights(model)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("speculative")
    target = spread_llama(len(tokenizer), seed=0)
    draft = noisy_copy(target, 0.4, seed=1)
    target_dir, draft_dir = (
        export_hf(target, tokenizer, folder / "target"),
        export_hf(draft, tokenizer, folder / "draft"),
    )
    configs = {
        "draft model": {"model": str(draft_dir), "num_speculative_tokens": K},
        "ngram": {"method": "ngram", "num_speculative_tokens": K, **NGRAM},
    }
    servers = {
        name: VLLMServer(target_dir, speculative_config=config, max_num_seqs=8, shared=False, progress=False)
        for name, config in configs.items()
    }
    starts = [server.start_in_background() for server in servers.values()]
    try:
        for start in starts:
            start.result()
        yield target, draft, servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def trace(served):
    target, _, _ = served
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


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("name", ["draft model", "ngram"])
def test_vllm_speculates_to_the_targets_own_tokens_and_counts_as_our_engine(served, trace, name):
    target, draft, servers = served
    server = servers[name]
    prompts, alone = trace
    before = spec_decode_counters(scrape(server))
    load = run_load(server, prompts, concurrency=len(prompts), max_tokens=MAX_NEW, ignore_eos=True)
    assert [r.token_ids for r in load.replies] == alone
    after = spec_decode_counters(scrape(server))
    theirs = counters_between(before, after)
    ours = our_engine(
        target,
        draft if name == "draft model" else NgramProposer(NGRAM["prompt_lookup_min"], NGRAM["prompt_lookup_max"]),
    )
    assert [o.tokens for o in ours.generate(prompts, MAX_NEW)] == alone
    assert theirs["num_draft_tokens"] > 0, f"vLLM verified no draft tokens; see {server.log_path}"
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
