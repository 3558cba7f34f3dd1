"""The KV cache's speedup on the tiny nano model and at GPT-2 small's size, like with like.

    python benchmarks/kv_cache_speedup.py [--repeats 3]    # about two minutes of CPU

Lesson 05 (section 5, "The same measurement at GPT-2 small's size") measures this once per side; this script
repeats it. Both models continue the same 4 prompts of 96 tokens (nano's corpus, seeds 1-4) by 16 tokens each,
greedy, on one torch thread (as the lesson runs). nano is the lesson's trained model; GPT-2 small is a
``Transformer`` with the sizes of ``memory.find_model("openai-community/gpt2")`` (124,439,808 parameters) and random
weights. ``tinyformer.generate.time_cache_speedup`` times each model: a warm-up, then cached and uncached runs
alternating, each of the ``--repeats`` uncached runs between two cached ones, each run in CPU seconds of this
process (on a shared machine, other programs' time is left out); the figure is the median uncached seconds over
the median cached seconds. Absolute seconds are printed as context only.

Target (issue 26): GPT-2 small's speedup >= 5x and above nano's; exits 1 when either is missed. Different tokens
with and without the cache raise an AssertionError.
"""

from __future__ import annotations

import argparse
import sys

import torch

from tinyformer import Transformer, memory
from tinyformer.data import Corpus
from tinyformer.generate import time_cache_speedup
from tinyformer.train import load_or_train

PROMPT_TOKENS, NEW_TOKENS, SEEDS = 96, 16, (1, 2, 3, 4)  # lesson 05's: 96 + 16 = 112 positions, within nano's 128
TARGET = 5.0  # GPT-2 small's cached / uncached speedup, at least


def models() -> tuple[dict[str, Transformer], list[list[int]]]:
    """nano and a random GPT-2 small, and the prompts (nano's token ids, which GPT-2's table holds too)."""
    nano, tokenizer = load_or_train("nano")
    torch.manual_seed(0)
    gpt2_small = Transformer(memory.find_model("openai-community/gpt2").to_tinyformer()).eval()
    prompts = [tokenizer.encode(Corpus(seed=seed).text(16))[:PROMPT_TOKENS] for seed in SEEDS]
    assert all(len(p) == PROMPT_TOKENS for p in prompts), "the corpus text is shorter than the prompt"
    return {"nano": nano.eval(), "GPT-2 small": gpt2_small}, prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="uncached runs per model (cached: one more)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as lesson 05; CPU seconds then measure one thread's work

    by_name, prompts = models()
    timings = {name: time_cache_speedup(m, prompts, NEW_TOKENS, repeats=args.repeats) for name, m in by_name.items()}
    for name, t in timings.items():
        assert t.cached_tokens == t.uncached_tokens, f"{name}: the KV cache changed the generated tokens"

    print(
        f"\ngreedy generation, {len(prompts)} prompts of {PROMPT_TOKENS} tokens + {NEW_TOKENS} new, one torch thread, "
        f"CPU seconds: medians of {args.repeats} uncached and {args.repeats + 1} cached runs\n"
    )
    print(f"{'model':12} {'parameters':>12} {'cached':>9} {'uncached':>9} {'speedup':>8}")
    for name, t in timings.items():
        params = by_name[name].num_parameters()
        print(f"{name:12} {params:>12,} {t.cached_seconds:8.3f}s {t.uncached_seconds:8.3f}s {t.speedup:7.1f}x")

    nano, big = timings["nano"].speedup, timings["GPT-2 small"].speedup
    missed = []
    if big < TARGET:
        missed.append(f"GPT-2 small's speedup {big:.1f}x is below {TARGET:.0f}x")
    if big <= nano:
        missed.append(f"GPT-2 small's speedup {big:.1f}x is not above nano's {nano:.1f}x")
    print("\n" + ("MISSED: " + "; ".join(missed) if missed else f"target met: GPT-2 small >= {TARGET:.0f}x and > nano"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
