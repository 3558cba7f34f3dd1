"""Generation speed with and without the KV cache, next to transformers' GPT-2, and export time.

    python benchmarks/generation_benchmark.py            # about a minute on 2 CPU cores

Targets (issue 3), all measured in this one run on the same weights:
  * greedy generation after a 16-token prompt, micro preset: cached >= 5x faster than uncached,
    identical tokens;
  * tinyformer's cached loop at least as fast as transformers' GPT2LMHeadModel.generate (use_cache=True),
    identical tokens;
  * export + verification of the nano model in under 10 s.

The micro preset has n_positions = 256, so a 16-token prompt leaves room for 240 new tokens (a
sequence holds at most n_positions tokens, as in vLLM's max_model_len); the table says so.
Timings are medians of several runs after a warm-up, with torch limited to 2 threads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinyformer.data import Corpus
from tinyformer.export import export_hf, to_hf_gpt2
from tinyformer.generate import generate
from tinyformer.train import load_or_train

PROMPT_TOKENS = 16
PRESET = "micro"


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()  # warm-up: first-call allocations, lazy imports, thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def corpus_prompt(tokenizer, n_tokens: int) -> list[int]:
    text = Corpus(seed=123).text(20)
    return tokenizer(text)["input_ids"][:n_tokens]


def generation_rows(repeats: int) -> tuple[list[tuple[str, float, str]], int]:
    model, tokenizer = load_or_train(PRESET)
    model.eval()
    prompt = corpus_prompt(tokenizer, PROMPT_TOKENS)
    new = model.config.n_positions - len(prompt)  # the most that fits: 256 - 16 = 240

    cached_s, cached = median_seconds(lambda: generate(model, prompt, new).tokens[0], repeats)
    uncached_s, uncached = median_seconds(lambda: generate(model, prompt, new, use_cache=False).tokens[0], repeats)

    hf_model = to_hf_gpt2(model)  # same weights; no eos id, so it also generates exactly `new` tokens
    ids = torch.tensor([prompt])

    def hf_generate():
        with torch.inference_mode():
            out = hf_model.generate(ids, max_new_tokens=new, do_sample=False, use_cache=True)
        return out[0, len(prompt) :].tolist()

    hf_s, hf_tokens = median_seconds(hf_generate, repeats)

    assert len(cached) == new, f"expected {new} tokens, got {len(cached)}"
    assert cached == uncached, "the KV cache changed the generated tokens"
    assert cached == hf_tokens, "transformers' GPT-2 with the same weights generated different tokens"
    rows = [
        ("tinyformer, KV cache", cached_s, f"{uncached_s / cached_s:.1f}x faster than uncached (target >= 5x)"),
        ("tinyformer, no cache", uncached_s, "recomputes the whole prefix every step"),
        (
            "transformers GPT2LMHeadModel.generate",
            hf_s,
            f"tinyformer cached is {hf_s / cached_s:.2f}x its speed (>= 1)",
        ),
    ]
    return [(name, s, s / new * 1e3, note) for name, s, note in rows], new


def export_row(repeats: int) -> tuple[str, float, float, str]:
    model, tokenizer = load_or_train("nano")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export_hf(model, tokenizer, Path(tmp) / "first")  # includes loading transformers' model classes
        first = time.perf_counter() - start
        counter = iter(range(repeats + 1))
        warm, _ = median_seconds(lambda: export_hf(model, tokenizer, Path(tmp) / f"run{next(counter)}"), repeats)
    return ("export + verify, nano", first, float("nan"), f"first call {first:.2f} s, then {warm:.2f} s (< 10 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the CI box's cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows, new = generation_rows(args.repeats)
    rows.append(export_row(args.repeats))
    print(f"\ngreedy generation, {PRESET} preset, {PROMPT_TOKENS}-token prompt + {new} new tokens "
          f"(= n_positions), torch threads = {torch.get_num_threads()}, median of {args.repeats}")  # fmt: skip
    print(f"{'':40} {'seconds':>8} {'ms/token':>9}   notes")
    for name, seconds, ms_per_token, note in rows:
        per_token = "" if ms_per_token != ms_per_token else f"{ms_per_token:9.2f}"  # NaN: not per token
        print(f"{name:40} {seconds:8.3f} {per_token:>9}   {note}")


if __name__ == "__main__":
    main()
