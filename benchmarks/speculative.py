"""Speculative decoding on the learner's engine (lesson 16): lesson 14's nano llama as the target, the one-layer
pico llama (same tokenizer, same corpus) as the draft, k = 1..5 draft tokens per step, on a seeded corpus trace.

Per k: acceptance rate and tokens per target step (vLLM's "mean acceptance length"), the seconds per generated
token against plain decoding with the same engine (alternated order, best of --repeats), and where the time went:
one draft step, one verify step (a target forward pass of 1 + k tokens per request), one plain step. From those
and the acceptance at k = 1, predicted_time_per_token (the formula, written once in tinyformer.engine.speculative)
predicts every k's time per token; the last line says how cheap a draft step would have to be for speculation to pay.

Targets (exit 1 when one is missed): what lesson 16 claims.
* every request's tokens equal plain decoding's, for every k (speculation must not change greedy output);
* the cost formula accounts for the time: for every k, the time per token it predicts from the measured draft and
  verify steps and the acceptance at k = 1 is within 25 % of the measured one (PREDICTION_TOLERANCE). The lesson
  uses the same formula to say at which draft cost speculation would pay, so a formula that missed the measured
  time would make that prediction worthless.
The acceptance rate itself is reported, not targeted: it is a property of this draft (a one-layer model), and the
lesson's point is what follows from it.

    python benchmarks/speculative.py [--requests 16] [--tokens 48] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from tinyformer.engine import Engine, SpeculativeEngine
from tinyformer.engine.speculative import corpus_prompts, expected_tokens_per_step, predicted_time_per_token
from tinyformer.train import load_or_train

PREDICTION_TOLERANCE = 0.25
KS = (1, 2, 3, 4, 5)
ENGINE = dict(num_blocks=64, block_size=16, max_num_seqs=16, max_num_batched_tokens=512)


def timed(engine: Engine, prompts, tokens) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    outputs = engine.generate(prompts, tokens)
    return time.perf_counter() - started, [o.tokens for o in outputs]


def measure(target, draft, prompts, tokens, k, repeats) -> dict:
    """Plain and speculative decoding of the same trace, alternated; the best time of each."""
    plain_times, spec_times = [], []
    for r in range(repeats):
        for kind in ("plain", "spec") if r % 2 == 0 else ("spec", "plain"):
            if kind == "plain":
                plain = Engine(target, **ENGINE)
                seconds, plain_tokens = timed(plain, prompts, tokens)
                plain_times.append(seconds)
            else:
                spec = SpeculativeEngine(target, draft, num_speculative_tokens=k, **ENGINE)
                seconds, spec_tokens = timed(spec, prompts, tokens)
                spec_times.append(seconds)
    generated = len(prompts) * tokens
    return {
        "k": k,
        "same": spec_tokens == plain_tokens,
        "acceptance": spec.spec.acceptance_rate,
        "tokens_per_step": spec.spec.mean_accepted_length,
        "plain_ms": 1e3 * min(plain_times) / generated,
        "spec_ms": 1e3 * min(spec_times) / generated,
        "plain_step_ms": 1e3 * min(plain_times) / plain.stats.steps,
        "draft_step_ms": 1e3 * spec.spec.draft_seconds / spec.drafter.engine.stats.steps,
        "verify_step_ms": 1e3 * spec.spec.target_seconds / spec.spec.target_steps,
    }


def prediction_error(row: dict, alpha: float) -> float:
    """(predicted - measured) / measured time per token of speculative decoding at this row's k, both as a
    fraction of plain decoding's (the formula counts steps, which serve every running request at once)."""
    predicted = predicted_time_per_token(row["k"], alpha, row["draft_step_ms"], row["verify_step_ms"])
    return (predicted / row["plain_step_ms"]) / (row["spec_ms"] / row["plain_ms"]) - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target, tokenizer = load_or_train("nano", arch="llama", progress=False)
    draft, _ = load_or_train("pico", arch="llama", progress=False)
    prompts = corpus_prompts(tokenizer, args.requests)
    timed(Engine(target, **ENGINE), prompts[:4], 4)  # warm-up
    rows = [measure(target, draft, prompts, args.tokens, k, args.repeats) for k in KS]
    alpha = rows[0]["acceptance"]
    print(
        f"{args.requests} requests x {args.tokens} tokens, {args.threads} threads; alpha (k=1 acceptance) {alpha:.3f}"
    )
    print(
        f"{'k':>2} {'same':>5} {'accept':>7} {'tok/step':>8} {'predicted':>9} {'plain ms/tok':>12} {'spec ms/tok':>11} "
        f"{'spec/plain':>10} {'predicted':>9} {'draft step':>10} {'verify step':>11} {'plain step':>10}"
    )
    for r in rows:
        predicted = predicted_time_per_token(r["k"], alpha, r["draft_step_ms"], r["verify_step_ms"])
        print(
            f"{r['k']:>2} {str(r['same']):>5} {r['acceptance']:>7.3f} {r['tokens_per_step']:>8.2f} "
            f"{expected_tokens_per_step(alpha, r['k']):>9.2f} {r['plain_ms']:>12.3f} {r['spec_ms']:>11.3f} "
            f"{r['spec_ms'] / r['plain_ms']:>10.2f} {predicted / r['plain_step_ms']:>9.2f} {r['draft_step_ms']:>10.2f} "
            f"{r['verify_step_ms']:>11.2f} {r['plain_step_ms']:>10.2f}"
        )
    for r in rows:  # k * draft + verify < E(k) * plain  <=>  draft < (E(k) * plain - verify) / k
        pays_below = (expected_tokens_per_step(alpha, r["k"]) * r["plain_step_ms"] - r["verify_step_ms"]) / r["k"]
        print(
            f"k={r['k']}: pays when a draft step costs under {pays_below:.2f} ms "
            f"({pays_below / r['plain_step_ms']:.2f} of a plain step; measured {r['draft_step_ms']:.2f} ms)"
        )
    missed = [f"k={r['k']}: tokens differ from plain decoding" for r in rows if not r["same"]]
    for r in rows:
        error = prediction_error(r, alpha)
        if abs(error) > PREDICTION_TOLERANCE:
            missed.append(f"k={r['k']}: predicted time per token is {error:+.0%} off the measured one")
    for line in missed:
        print("MISSED:", line)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
