"""tinyformer.engine.speculative: a draft proposes, the target verifies in one pass, rejected slots are given back.

The reference for every output is the target alone (``tinyformer.generate``, greedy, the plain KV cache of
lesson 05). Drafts of three kinds exercise every branch of the acceptance rule: the target itself (everything
accepted, so many tokens per step and blocks filled by accepted drafts), an unrelated model (nearly everything
rejected, so rollbacks every step) and the target with noise on its weights (a mix).
"""

from __future__ import annotations

import random

import pytest
from conftest import noisy_copy, spread_model

from tinyformer.config import ModelConfig
from tinyformer.engine import (
    BlockManager,
    Engine,
    Sequence,
    SpeculativeEngine,
    accepted_tokens,
    block_hash,
    speculative,
)
from tinyformer.engine.speculative import NgramProposer, expected_tokens_per_step, predicted_time_per_token
from tinyformer.generate import generate
from tinyformer.model import Transformer

VOCAB, MAX_NEW = 60, 40


@pytest.fixture(scope="module")
def target() -> Transformer:
    # Spread weights: a chunk of k + 1 tokens sums in another order than one-token decoding, which must not flip a
    # greedy choice.
    return spread_model(0, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def drafts(target) -> dict[str, Transformer]:
    return {
        "the target itself": target,
        "noisy target": noisy_copy(target, 0.4, seed=1),
        "unrelated": spread_model(7, vocab_size=VOCAB, n_layer=1),
    }


def prompts_of(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(VOCAB) for _ in range(rng.randint(4, 40))] for _ in range(n)]
    return prompts + [prompts[0][:20] + [1, 2, 3], prompts[0][:20] + [4, 5]]  # two that share a prefix: cache hits


@pytest.fixture(scope="module")
def trace(target):
    prompts = prompts_of(10)
    return prompts, [generate(target, p, MAX_NEW).tokens[0] for p in prompts]


def spec_engine(target, draft, k=3, num_blocks=40, block_size=16, max_num_seqs=16, max_num_batched_tokens=256, **kw):
    return SpeculativeEngine(
        target,
        draft,
        num_speculative_tokens=k,
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        **kw,
    )


# ----- the acceptance rule -----------------------------------------------------------------------------


def test_acceptance_keeps_the_agreeing_prefix_and_the_targets_own_token():
    assert accepted_tokens([5, 6, 7], [5, 6, 7, 8]) == [5, 6, 7, 8]  # all accepted, plus the bonus token
    assert accepted_tokens([5, 6, 7], [5, 9, 7, 8]) == [5, 9]  # the first disagreement ends it, even if 7 matches
    assert accepted_tokens([5, 6, 7], [4, 6, 7, 8]) == [4]  # nothing accepted: what plain decoding gives
    assert accepted_tokens([5, 6, 7], [5, 6]) == [5, 6]  # the budget cut the chunk: only one draft was checked
    assert accepted_tokens([], [3]) == [3]


def test_expected_tokens_per_step_is_the_geometric_sum():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)
    # one draft step as dear as a target step and alpha = 0.5, k = 1: (1 + 1) / 1.5 target steps per token
    assert predicted_time_per_token(1, 0.5, draft_step=1.0, verify_step=1.0) == pytest.approx(2 / 1.5)


# ----- the rollback ------------------------------------------------------------------------------------


def test_roll_back_frees_the_blocks_of_rejected_drafts_across_a_block_boundary():
    manager = BlockManager(num_blocks=8, block_size=4)
    seq = Sequence.from_prompt(0, [1, 2, 3, 4, 5, 6], max_new_tokens=20)
    assert manager.allocate(seq, 6)  # the prompt: blocks 1 (tokens 1-4) and 2 (5, 6)
    seq.num_computed_tokens = 6
    seq.token_ids.append(7)  # sampled from the prompt: 7 tokens, 6 cached
    seq.draft_ids = [10, 11, 12, 13, 14, 15]
    assert manager.allocate(seq, 1 + 6)  # verify 7 d1..d6: positions 6..12 -> 13 tokens -> 4 blocks
    assert seq.block_table == [1, 2, 3, 4]
    assert manager.blocks[2].hash is None  # block 2 holds 5, 6, 7, d1: not named before the drafts are checked
    seq.num_computed_tokens += 7
    seq.token_ids += [10, 42]  # d1 accepted, d2 rejected: the target's own token 42 instead
    given_back = manager.roll_back(seq, seq.num_tokens - 1)  # keep 1..7, 10 cached (8 tokens, 2 blocks)
    assert given_back == [3, 4] and seq.block_table == [1, 2] and seq.num_computed_tokens == 8
    assert list(manager.free)[:2] == [3, 4]  # never named: first in line to be reused
    assert [manager.blocks[i].ref_count for i in (1, 2, 3, 4)] == [1, 1, 0, 0]
    assert manager.blocks[2].hash == block_hash(block_hash(None, [1, 2, 3, 4]), [5, 6, 7, 10])  # filled, now named
    with pytest.raises(ValueError, match="can keep 0..8 cached tokens"):
        manager.roll_back(seq, 9)


# ----- the engine against the target alone ----------------------------------------------------------------

BUDGETS = {
    "roomy": dict(num_blocks=60),
    "tight: preemptions": dict(num_blocks=12),
    "chunked prefill": dict(max_num_batched_tokens=9),
    "no prefix caching": dict(num_blocks=12, enable_prefix_caching=False),
}


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
@pytest.mark.parametrize("draft_name", ["the target itself", "noisy target", "unrelated"])
def test_every_request_gets_what_the_target_alone_gives(target, drafts, trace, draft_name, budget):
    prompts, alone = trace
    engine = spec_engine(target, drafts[draft_name], k=3, **budget)
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] == alone
    assert engine.block_manager.num_used_blocks == 0  # every block given back, rejected or finished
    assert engine.spec.num_draft_tokens > 0


def test_the_trace_preempts_hits_the_prefix_cache_and_rejects(target, drafts, trace):
    """The settings above really exercise what they claim to, with a draft that is sometimes right."""
    prompts, alone = trace
    engine = spec_engine(target, drafts["noisy target"], k=3, num_blocks=12)
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] == alone
    assert engine.stats.preemptions > 0 and engine.stats.prefix_cache_hit_tokens > 0
    assert 0.2 < engine.spec.acceptance_rate < 0.95  # both branches of the rule, many times
    assert engine.spec.accepted_per_pos == sorted(engine.spec.accepted_per_pos, reverse=True)
    assert sum(engine.spec.accepted_per_pos) == engine.spec.num_accepted_tokens


@pytest.mark.parametrize("k", [1, 2, 5])
def test_a_perfect_draft_gains_k_plus_one_tokens_per_step(target, trace, k):
    prompts, alone = trace
    engine = spec_engine(target, target, k=k, num_blocks=60)
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] == alone
    assert engine.spec.acceptance_rate == 1.0
    # Each request's first token comes from its prefill; every later step gains k + 1 (the last one may be cut).
    steps_per_request = -(-(MAX_NEW - 1) // (k + 1))
    assert engine.spec.num_drafts == len(prompts) * steps_per_request


def test_counters_add_up_to_the_tokens_generated(target, drafts, trace):
    prompts, _ = trace
    engine = spec_engine(target, drafts["noisy target"], k=4, num_blocks=60)
    engine.generate(prompts, MAX_NEW)
    spec, stats = engine.spec, engine.stats
    assert stats.generated_tokens == len(prompts) * MAX_NEW
    # every verify step gains accepted + 1 tokens, the prefill one; only the last step of a request is cut short
    gained = len(prompts) + spec.num_drafts + spec.num_accepted_tokens
    assert len(prompts) * MAX_NEW <= gained < len(prompts) * (MAX_NEW + 4)
    assert spec.mean_accepted_length == pytest.approx(1 + spec.num_accepted_tokens / spec.num_drafts)


def test_a_wrong_acceptance_rule_is_caught(target, drafts, trace, monkeypatch):
    """Mutation test: the comparison with the target alone catches a rule that keeps drafts unchecked."""
    prompts, alone = trace

    def trusting(draft_ids, target_ids):  # keeps every checked draft and the last target token
        return draft_ids[: len(target_ids) - 1] + target_ids[-1:]

    monkeypatch.setattr(speculative, "accepted_tokens", trusting)
    engine = spec_engine(target, drafts["noisy target"], k=3)
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] != alone


def test_the_plain_engine_still_counts_one_token_per_request_step(target, trace):
    prompts, alone = trace
    engine = Engine(target, num_blocks=40, block_size=16, max_num_seqs=16, max_num_batched_tokens=256)
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] == alone
    assert engine.stats.generated_tokens == len(prompts) * MAX_NEW


def test_ngram_lookup_proposes_what_followed_the_longest_earliest_match():
    lookup = NgramProposer(min_n=1, max_n=3).lookup
    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 2, 3], 2) == [9, 1]  # "2 3" twice before: the earliest, not "3" alone
    assert lookup([5, 1, 2, 6, 1, 2], 3) == [6, 1, 2]
    assert lookup([5, 1, 2, 6, 1, 2], 9) == [6, 1, 2]  # runs out at the end of the request
    assert lookup([1, 2, 3], 2) == []  # no n-gram repeats
    assert NgramProposer(min_n=2, max_n=2).lookup([4, 1, 4], 2) == []  # "4" repeats, but 2-grams are asked for


@pytest.mark.parametrize("budget", [dict(num_blocks=60), dict(num_blocks=12)], ids=["roomy", "tight"])
def test_ngram_drafts_give_the_target_alone_too(target, trace, budget):
    prompts, alone = trace
    engine = spec_engine(target, NgramProposer(1, 3), k=3, **budget)
    assert [o.tokens for o in engine.generate(prompts, MAX_NEW)] == alone
    assert engine.spec.num_drafts > 0


# ----- bad input ----------------------------------------------------------------------------------------


def test_bad_drafts_are_refused_before_any_work(target):
    other_vocab = Transformer(ModelConfig(vocab_size=VOCAB + 1, n_positions=128, n_embd=32, n_layer=1, n_head=1))
    with pytest.raises(ValueError, match="must use the target's tokenizer"):
        spec_engine(target, other_vocab)
    short = Transformer(ModelConfig(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=1, n_head=1))
    with pytest.raises(ValueError, match="fewer than the target's 128"):
        spec_engine(target, short)
    for k in (0, 17, 2.0, True):
        with pytest.raises(ValueError, match="num_speculative_tokens must be a whole number from 1 to 16"):
            spec_engine(target, target, k=k)
    with pytest.raises(ValueError, match="draft must be a tinyformer Transformer or an NgramProposer"):
        spec_engine(target, "draft.pt")
    with pytest.raises(ValueError, match="need whole numbers 1 <= min_n <= max_n"):
        NgramProposer(3, 2)
