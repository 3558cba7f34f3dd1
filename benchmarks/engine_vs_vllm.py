"""The learner's engine (tinyformer.engine) against the real vLLM, same model, same trace, same box, one run.

    python benchmarks/engine_vs_vllm.py [--requests 32] [--tokens 48] [--repeats 2]

One vLLM server (33 blocks of 32 tokens, max_num_seqs 64, max_num_batched_tokens 256) and our Engine built with the
number of blocks vLLM reports. Prints one table:
  * generated tokens/s at concurrency 1 and 16 for both (vLLM: client requests in flight over HTTP; ours:
    ``max_num_seqs`` = concurrency, in this process), best of ``--repeats``, and ours / vLLM (target at 16: >= 0.5);
  * cache utilisation of our engine at concurrency 16: slots held (blocks x block_size) / tokens held, summed over
    the steps, against 1 + block_size / mean request length (paging wastes at most one partial block per request).
Both engines must give identical greedy tokens for every request (checked, not timed).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from tinyformer.data import Corpus
from tinyformer.engine import Engine
from tinyformer.serving import VLLMServer, run_load
from tinyformer.serving.prepare import lesson_export

BLOCK_SIZE, NUM_BLOCKS = 32, 33
BUDGET = dict(max_num_seqs=64, max_num_batched_tokens=256)


def trace(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    """n prompts of 8-16 consecutive corpus tokens: with the new tokens, each request fits in two blocks."""
    text = [t for s in Corpus(seed=3).sentences(800) for t in tokenizer(" ".join(s))["input_ids"]]
    rng = random.Random(seed)
    starts = [(rng.randrange(len(text) - 16), rng.randint(8, 16)) for _ in range(n)]
    return [text[s : s + length] for s, length in starts]


def ours(model, prompts, tokens, concurrency, repeats) -> tuple[float, list[list[int]], Engine]:
    best, outputs, engine = 0.0, None, None
    for _ in range(repeats):
        engine = Engine(model, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE, **{**BUDGET, "max_num_seqs": concurrency})
        started = time.perf_counter()
        outputs = engine.generate(prompts, tokens)
        best = max(best, sum(len(o.tokens) for o in outputs) / (time.perf_counter() - started))
    return best, [o.tokens for o in outputs], engine


def theirs(server, prompts, tokens, concurrency, repeats) -> tuple[float, list[list[int]]]:
    loads = [
        run_load(server, prompts, concurrency=concurrency, max_tokens=tokens, ignore_eos=True) for _ in range(repeats)
    ]
    return max(load.tokens_per_second for load in loads), [r.token_ids for r in loads[-1].replies]


def utilisation(engine: Engine) -> tuple[float, float]:
    """(slots held / tokens held, the bound 1 + block_size / mean tokens per running request), over all steps.

    Each running request wastes at most one partly filled block, so slots < tokens + requests x block_size, i.e.
    slots / tokens < 1 + block_size / (tokens / requests)."""
    steps = [r for r in engine.stats.timeline if r.tokens_held]
    slots, tokens = sum(r.blocks_used * BLOCK_SIZE for r in steps), sum(r.tokens_held for r in steps)
    mean_length = tokens / sum(r.running for r in steps)
    return slots / tokens, 1 + BLOCK_SIZE / mean_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=48, help="generated tokens per request")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs, each side")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as vLLM's CPU worker does for a model this small

    model, tokenizer, export_dir = lesson_export("nano", progress=False)
    prompts = trace(tokenizer, args.requests)
    rows = []
    server = VLLMServer(
        export_dir,
        kv_cache_tokens=NUM_BLOCKS * BLOCK_SIZE,
        block_size=BLOCK_SIZE,
        shared=False,
        progress=False,
        **BUDGET,
    )
    with server:
        assert server.reported.num_blocks == NUM_BLOCKS, server.reported
        run_load(server, prompts[:8], concurrency=8, max_tokens=4)  # warm-up
        ours(model, prompts[:8], 4, 8, 1)
        for concurrency in (1, 16):
            vllm_rate, vllm_tokens = theirs(server, prompts, args.tokens, concurrency, args.repeats)
            own_rate, own_tokens, engine = ours(model, prompts, args.tokens, concurrency, args.repeats)
            assert own_tokens == vllm_tokens, f"different tokens at concurrency {concurrency}"
            ratio = own_rate / vllm_rate
            rows.append((f"vLLM tokens/s, concurrency {concurrency}", f"{vllm_rate:.0f}", "", None))
            rows.append((f"ours tokens/s, concurrency {concurrency}", f"{own_rate:.0f}", "", None))
            target = ">= 0.5" if concurrency == 16 else "report"
            rows.append(
                (
                    f"ours / vLLM, concurrency {concurrency}",
                    f"{ratio:.2f}",
                    target,
                    ratio >= 0.5 if concurrency == 16 else None,
                )
            )
    held, bound = utilisation(engine)
    rows.append(("slots held / tokens held (all steps, c16)", f"{held:.3f}", f"<= {bound:.3f}", held <= bound))

    print(
        f"\nengine vs vLLM: nano, {args.requests} requests x {args.tokens} tokens, blocks {NUM_BLOCKS} x {BLOCK_SIZE}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>10}  {'target':>10}  ok")
    for name, value, target, ok in rows:
        print(f"{name:<{width}}  {value:>10}  {target:>10}  {'' if ok is None else ('yes' if ok else 'NO')}")


if __name__ == "__main__":
    main()
