"""The learner's engine (tinyformer.engine) against vLLM's own offline engine, like with like.

    python benchmarks/engine_vs_vllm.py [--requests 64] [--tokens 16] [--pairs 3] [--models nano,gpt2-small]

(``--models`` also takes a tinyformer checkpoint file, e.g. ``artifacts/micro.pt``.)

Both sides run offline, in a process of their own started fresh for each measurement, on the same model (the
trained nano; a GPT-2-small-sized model with random weights), the same trace, the same KV pool (65 blocks of 32
tokens, one of them the null block) and budget (max_num_seqs 64, max_num_batched_tokens 256), in float32 on one
CPU thread, greedy. vLLM's side is ``vllm.LLM`` (its engine core in its own process, as ``LLM.generate`` runs it);
ours is ``tinyformer.engine.Engine``. Concurrency c means what a client sees: at most c requests in flight, the next
added as soon as one finishes (the loop ``LLM.generate`` runs, with the adds spaced out). Each process warms up,
then times concurrency 1, 16 and 64 in turn and writes tokens/s and every request's tokens.

A pair is one process of each side, back to back; the side that goes first alternates from pair to pair, and the
figure is the median over ``--pairs`` (>= 3) of the pair's ours / vLLM ratio. Every request's tokens must be
identical on both sides (checked, not timed). Exits 1 when a target is missed: ours >= 0.5 x vLLM at concurrency
16 for nano (the engine lesson's claim: a teaching engine need not be slower than half of vLLM on the model it
serves).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from itertools import count
from pathlib import Path

BLOCK_SIZE, NUM_BLOCKS = 32, 65  # 64 usable blocks: 64 requests of up to 32 tokens at once
BUDGET = dict(max_num_seqs=64, max_num_batched_tokens=256)
CONCURRENCIES = (1, 16, 64)
TARGETS = {("nano", 16): 0.5}  # (model, concurrency): the least ours / vLLM that passes
GPT2_SMALL = dict(n_positions=128, n_embd=768, n_layer=12, n_head=12)  # 85M parameters without the embeddings
CORE = 0  # both sides pinned to the same core


# ----- the models and the trace (in the parent) --------------------------------------------------------------


def prepare(name: str) -> tuple[Path, Path]:
    """(tinyformer checkpoint, Hugging Face export) of ``name``: the lessons' nano, or a random GPT-2-small."""
    from tinyformer.paths import artifacts_dir

    if name == "nano":
        from tinyformer.serving.prepare import lesson_export

        _, _, folder = lesson_export("nano", progress=False)
        return artifacts_dir() / "nano.pt", folder
    if name.endswith(".pt"):  # any tinyformer checkpoint, exported beside the others
        from tinyformer.checkpoint import load_checkpoint
        from tinyformer.export import export_hf

        model, tokenizer, _ = load_checkpoint(name)
        return Path(name), export_hf(model, tokenizer, artifacts_dir() / f"bench-{Path(name).stem}-hf", overwrite=True)
    if name != "gpt2-small":
        raise ValueError(f"unknown model {name!r}; choose nano, gpt2-small or a checkpoint file (.pt).")
    import torch

    from tinyformer import ModelConfig, Transformer, build_tokenizer
    from tinyformer.checkpoint import save_checkpoint
    from tinyformer.export import export_hf

    checkpoint, folder = artifacts_dir() / "bench-gpt2-small.pt", artifacts_dir() / "bench-gpt2-small-hf"
    if not (folder / "config.json").is_file():
        tokenizer = build_tokenizer()
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=len(tokenizer), **GPT2_SMALL)).eval()
        save_checkpoint(checkpoint, model, tokenizer)
        export_hf(model, tokenizer, folder, overwrite=True)
    return checkpoint, folder


def trace(n: int, seed: int = 0) -> list[list[int]]:
    """n prompts of 8-16 consecutive corpus tokens: with 16 new tokens each request fits one block."""
    from tinyformer import build_tokenizer
    from tinyformer.data import Corpus

    tokenizer = build_tokenizer()
    text = [t for s in Corpus(seed=3).sentences(800) for t in tokenizer(" ".join(s))["input_ids"]]
    rng = random.Random(seed)
    starts = [(rng.randrange(len(text) - 16), rng.randint(8, 16)) for _ in range(n)]
    return [text[s : s + length] for s, length in starts]


# ----- one side, in a fresh process --------------------------------------------------------------------------


def keep_in_flight(prompts, concurrency, add, step) -> tuple[float, list[list[int]]]:
    """(generated tokens/s, each request's tokens) with at most ``concurrency`` requests in flight.

    ``add(i, prompt)`` queues request i; ``step()`` runs one engine step and returns [(i, tokens)] of the requests
    that finished in it."""
    pending, done, in_flight = deque(enumerate(prompts)), {}, 0
    started = time.perf_counter()
    while pending or in_flight:
        while pending and in_flight < concurrency:
            add(*pending.popleft())
            in_flight += 1
        for i, tokens in step():
            done[i] = tokens
            in_flight -= 1
    seconds = time.perf_counter() - started
    return sum(map(len, done.values())) / seconds, [done[i] for i in range(len(prompts))]


def run_ours(checkpoint: Path, prompts, max_tokens: int):
    import torch

    from tinyformer.checkpoint import load_checkpoint
    from tinyformer.engine import Engine

    torch.set_num_threads(1)
    model, _, _ = load_checkpoint(checkpoint)
    engine = Engine(model, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE, **BUDGET)
    ids = {}

    def add(i, prompt):
        ids[engine.add_request(prompt, max_tokens).seq_id] = i

    def step():
        return [(ids[s.seq_id], s.output_ids) for s in engine.step()]

    return lambda c, ps=prompts: keep_in_flight(ps, c, add, step)


def run_vllm(folder: Path, prompts, max_tokens: int):
    from vllm import LLM, SamplingParams, TokensPrompt

    from tinyformer.serving import bytes_for_tokens
    from tinyformer.serving.budget import model_config_from_dir

    config = model_config_from_dir(folder)
    llm = LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=config.n_positions,
        kv_cache_memory_bytes=bytes_for_tokens(config, NUM_BLOCKS * BLOCK_SIZE, block_size=BLOCK_SIZE),
        block_size=BLOCK_SIZE,
        enforce_eager=True,
        seed=0,
        **BUDGET,
    )
    blocks = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
    if blocks is not None and blocks != NUM_BLOCKS:
        raise RuntimeError(f"vLLM made {blocks} blocks, not {NUM_BLOCKS}: the pools differ.")
    engine, ids, names = llm.llm_engine, {}, count()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)

    def add(i, prompt):
        name = str(next(names))  # unique over the warm-up and every run; outputs carry it back
        engine.add_request(name, TokensPrompt(prompt_token_ids=prompt), params)
        ids[name] = i

    def step():
        return [(ids[o.request_id], list(o.outputs[0].token_ids)) for o in engine.step() if o.finished]

    return lambda c, ps=prompts: keep_in_flight(ps, c, add, step)


def worker(args) -> int:
    os.sched_setaffinity(0, {CORE})
    prompts = json.loads(Path(args.prompts).read_text())
    source = Path(args.source)
    run = run_ours(source, prompts, args.tokens) if args.worker == "ours" else run_vllm(source, prompts, args.tokens)
    run(8, prompts[:8])  # warm-up
    results = {}
    for c in CONCURRENCIES:
        rate, tokens = run(c)
        results[c] = {"tokens_per_second": rate, "tokens": tokens}
    Path(args.out).write_text(json.dumps(results))
    return 0


# ----- the parent: pairs of fresh processes ------------------------------------------------------------------


def measure(side: str, source: Path, prompts_file: Path, tokens: int, out: Path) -> dict:
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(CORE), "VLLM_NO_USAGE_STATS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--worker", side, "--source", str(source), "--prompts", str(prompts_file)]
    command += ["--tokens", str(tokens), "--out", str(out)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode:
        raise RuntimeError(f"the {side} process failed:\n{finished.stderr[-3000:]}")
    return {int(c): r for c, r in json.loads(out.read_text()).items()}


def compare(name: str, args, scratch: Path) -> list[tuple]:
    checkpoint, folder = prepare(name)
    prompts = trace(args.requests)
    prompts_file = scratch / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    ratios, rates = {c: [] for c in CONCURRENCIES}, {c: ([], []) for c in CONCURRENCIES}
    for pair in range(args.pairs):
        sides = ("ours", "vllm") if pair % 2 == 0 else ("vllm", "ours")
        got = {
            s: measure(s, checkpoint if s == "ours" else folder, prompts_file, args.tokens, scratch / s) for s in sides
        }
        for c in CONCURRENCIES:
            ours, theirs = got["ours"][c], got["vllm"][c]
            same = sum(a == b for a, b in zip(ours["tokens"], theirs["tokens"], strict=True))
            if same != len(prompts):
                raise AssertionError(
                    f"{name}, concurrency {c}: only {same}/{len(prompts)} requests got the same tokens"
                )
            ratios[c].append(ours["tokens_per_second"] / theirs["tokens_per_second"])
            rates[c][0].append(ours["tokens_per_second"])
            rates[c][1].append(theirs["tokens_per_second"])
        print(
            f"{name} pair {pair + 1} ({' then '.join(sides)}): "
            + ", ".join(f"c{c} {ratios[c][-1]:.2f}" for c in ratios)
        )
    rows = []
    for c in CONCURRENCIES:
        target = TARGETS.get((name, c))
        ratio = statistics.median(ratios[c])
        ours, theirs = statistics.median(rates[c][0]), statistics.median(rates[c][1])
        rows.append((name, c, ours, theirs, ratio, ratios[c], target, None if target is None else ratio >= target))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16, help="generated tokens per request")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of fresh processes (the median is reported)")
    parser.add_argument("--models", default="nano,gpt2-small")
    parser.add_argument("--worker", choices=("ours", "vllm"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.pairs < 3 or args.requests < max(CONCURRENCIES) or not 1 <= args.tokens <= 16:
        parser.error("give --pairs >= 3, --requests >= 64 (concurrency 64 needs them) and --tokens 1..16 (one block)")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            rows += compare(name, args, Path(scratch))
    print(
        f"\nours / vLLM offline, {args.requests} requests x {args.tokens} tokens, {NUM_BLOCKS} blocks of {BLOCK_SIZE}, "
        f"1 thread, median of {args.pairs} pairs; tokens identical on every request"
    )
    print(f"{'model':<11} {'conc':>4} {'ours tok/s':>10} {'vLLM tok/s':>10} {'ratio':>6}  {'pairs':<18} target")
    for name, c, ours, theirs, ratio, each, target, ok in rows:
        verdict = "" if target is None else f">= {target} {'ok' if ok else 'MISSED'}"
        pairs = " ".join(f"{r:.2f}" for r in each)
        print(f"{name:<11} {c:>4} {ours:>10.0f} {theirs:>10.0f} {ratio:>6.2f}  {pairs:<18} {verdict}")
    return 1 if any(ok is False for *_, ok in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
