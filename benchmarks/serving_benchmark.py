"""Serving targets, measured on this machine with a real vLLM server and the lesson's model.

    python benchmarks/serving_benchmark.py [--preset nano] [--requests 64] [--tokens 64]

Prints one table:
  * how long the server takes to become healthy (target <= 45 s on a 2-core CPU);
  * generated tokens/s at client concurrency 1..64 on the same server, and the ratio 64 vs 1 (target >= 12x);
  * vLLM at concurrency 64 vs tinyformer's own KV-cached generate(), one request after another, same prompts;
  * KV-cache tokens predicted from the config vs reported by vLLM, for several configs and tensor parallelism 2.
"""

from __future__ import annotations

import argparse
import time

import torch

from tinyformer.data import Corpus
from tinyformer.generate import generate
from tinyformer.serving import VLLMServer, run_load
from tinyformer.serving.prepare import lesson_export

CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
BLOCK = 128  # CPU block size in tokens


def prompts_for(n: int) -> list[str]:
    return [" ".join(words[:4]) for words in Corpus(seed=11).sentences(n)]


def throughput_rows(export_dir, prompts, tokens) -> tuple[list[tuple], float]:
    rows = []
    server = VLLMServer(export_dir, kv_cache_tokens=2 * len(prompts) * BLOCK, shared=False, progress=False)
    with server:
        rows.append(("server ready (s)", f"{server.ready_seconds:.1f}", "<= 45", server.ready_seconds <= 45))
        run_load(server, prompts[:8], concurrency=8, max_tokens=4)  # warm-up
        rates = {}
        for c in CONCURRENCY:
            rates[c] = run_load(server, prompts, concurrency=c, max_tokens=tokens, ignore_eos=True).tokens_per_second
            rows.append((f"vLLM tokens/s, concurrency {c}", f"{rates[c]:.0f}", "", None))
        ratio = rates[64] / rates[1]
        rows.append(("throughput ratio c64 / c1", f"{ratio:.1f}x", ">= 12x", ratio >= 12))
    return rows, rates[64]


def sequential_tinyformer(model, tokenizer, prompts, tokens) -> float:
    """tinyformer's own KV-cached greedy generation, one request after another."""
    start = time.perf_counter()
    generated = 0
    for prompt in prompts:
        generated += len(generate(model, tokenizer(prompt)["input_ids"], tokens).tokens[0])
    return generated / (time.perf_counter() - start)


def kv_rows(export_dir) -> list[tuple]:
    configs = [
        dict(max_model_len=128, kv_cache_tokens=10 * BLOCK),
        dict(max_model_len=100, kv_cache_tokens=1000),  # rounded up to 8 blocks, 1 block per request
        dict(max_model_len=128, kv_cache_tokens=320, block_size=32),  # 4 blocks per request
        dict(max_model_len=128, kv_cache_bytes=1_310_720, tensor_parallel_size=2),  # 10 blocks of bytes per worker
    ]
    rows = []
    for config in configs:
        with VLLMServer(export_dir, shared=False, progress=False, **config) as server:
            predicted, reported = server.predicted, server.reported
        label = ", ".join(f"{k}={v}" for k, v in config.items())
        match = reported is not None and reported.tokens == predicted.tokens
        got = "-" if reported is None else f"{reported.tokens:,} ({reported.max_concurrency:.2f}x)"
        rows.append((f"KV tokens: {label}", got, f"{predicted.tokens:,} ({predicted.max_concurrency:.2f}x)", match))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano", help="the lessons serve nano (default)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per request")
    args = parser.parse_args()

    model, tokenizer, export_dir = lesson_export(args.preset, progress=False)
    prompts = prompts_for(args.requests)
    rows, vllm_rate = throughput_rows(export_dir, prompts, args.tokens)
    own_rate = sequential_tinyformer(model, tokenizer, prompts, args.tokens)
    rows.append(("tinyformer generate() tokens/s, sequential", f"{own_rate:.0f}", "", None))
    rows.append(("vLLM c64 / tinyformer sequential", f"{vllm_rate / own_rate:.1f}x", "report", None))
    rows += kv_rows(export_dir)

    print(
        f"\nserving benchmark: preset {args.preset}, {args.requests} requests x {args.tokens} tokens, "
        f"{torch.get_num_threads()} torch threads"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>20}  {'target / predicted':>20}  ok")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"{name:<{width}}  {value:>20}  {target:>20}  {mark}")


if __name__ == "__main__":
    main()
