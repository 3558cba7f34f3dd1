"""vLLM's own benchmark client (`vllm bench serve`, via tinyformer.serving.vllm_bench) and the suite's load generator
(run_load) on one trace against one server (lesson 07's nano): do they agree on what they both measure?

vLLM's client streams every request (server-sent events), so the like-for-like partner is run_load(stream=True):
both then measure output throughput (generated tokens per second of the run), each request's end-to-end latency and
its time to first token (TTFT). Per concurrency the three clients (vLLM's, ours streamed, ours plain) take turns,
the first of them rotating from repeat to repeat; the table shows the median of the paired ratios vLLM's / ours
streamed, vLLM's own TPOT and ITL as context (only it splits them out), and vLLM's / ours plain throughput, which is
what streaming costs on this box (64 streams make the API process send 64 x 32 events beside the engine).

Two traces: "fixed" (every prompt 6 words of the course corpus) and "random" (random words of the vocabulary,
2-24 tokens, as vLLM's random dataset draws random tokens).

Target (exit 1 when missed): every median ratio of vLLM's client to ours streamed within 0.8-1.25, or, where one
client disagrees with itself more than that, within its own repeat-to-repeat spread (self_spread): two clients can't
be asked to agree more closely than either agrees with itself.

Why the spread and the extra repeats at 16 and 64 (measured 2026-12-07, lesson 07's nano, 64 requests x 32 tokens at
64 in flight): the engine's steps took under 4 ms each (log_iterations), but the API process, on one core beside the
engine and the client, took ~100 ms to admit the 64 requests and 500-720 ms to stream their 2,112 events. What one
run measures is that process's scheduling: 26 runs in a row, order varied, gave ours streamed 1,876-6,001 tok/s and
vLLM's client 3,268-4,614 tok/s, with no effect of which client ran before (medians 4,421 and 4,330: ratio 0.98).

    trace   concurrency | vLLM's / ours streamed: throughput latency TTFT | either client with itself | / ours plain
    fixed             1 |                             0.97    1.03 1.13 |       1.03   1.04   1.09 | 0.92
    fixed            16 |                             0.98    0.99 1.12 |       1.11   1.10   1.15 | 0.79
    fixed            64 |                             1.03    0.96 1.42 |       1.15   1.14   1.21 | 0.65
    random            1 |                             1.01    1.01 1.06 |       1.03   1.04   1.25 | 0.89
    random           16 |                             0.97    1.03 1.09 |       1.06   1.09   1.11 | 0.78
    random           64 |                             0.90    1.10 1.39 |       1.10   1.14   1.30 | 0.53

(3 repeats at concurrency 1, 9 at 16 and 64.) Throughput and latency agree in every cell; the streaming cost column
is what 64 streams of events cost the API process against plain replies. Before the load generator moved from httpx
with a fresh connection per request to aiohttp with pooled keep-alive connections (as vLLM's client sends), ours
streamed measured ~30 % less throughput at 16 and 64: the client's own CPU, on the two cores the server also needs.

Still missed: TTFT at 64 in flight, where vLLM's client reports first tokens ~40 % later than ours (1.42 fixed,
1.39 random; 1.82 and 2.09 in earlier runs with 3 repeats). Narrowed down, not explained: it is not the request's
fields (ours with stream_options include_usage or repetition_penalty 1.0, as vLLM's client sends: 131 and 138 ms
against 132), nor vLLM's request function (async_request_openai_completions driven by asyncio.gather as ours is:
133 ms against ours 130 ms and vLLM's benchmark() 205 ms, 8 runs each, order rotated), nor its connector settings
(133 ms), nor the /metrics read before its burst (157 against 159 ms): it is in how benchmark() drives the requests.

    python benchmarks/bench_clients.py [--requests 64] [--tokens 32] [--repeats 3] [--traces fixed,random]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys

from tinyformer.data import Corpus
from tinyformer.serving import VLLMServer, run_load, vllm_bench
from tinyformer.serving.prepare import lesson_export

CONCURRENCY = (1, 16, 64)
# A run at concurrency 1 sends its requests one by one (~8 s); at 16 and 64 a run takes about a second, and one run
# is much noisier than the next (below): those cells get this many times the repeats, for about the same time each.
BUSY_REPEATS_FACTOR = 3
AGREEMENT = (0.8, 1.25)
CLIENTS = ("theirs", "streamed", "plain")
COMPARED = ("throughput", "latency", "ttft")


def fixed_trace(n: int) -> list[str]:
    return [" ".join(words[:6]) for words in Corpus(seed=11).sentences(n)]


def random_trace(tokenizer, n: int, seed: int = 0) -> list[str]:
    words = [w for w in tokenizer.get_vocab() if not w.startswith("<")]  # one word is one token
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 24))) for _ in range(n)]


def run_client(who: str, server, prompts, tokens: int, concurrency: int) -> dict:
    """{throughput: tok/s, latency: median ms, ttft: median ms} as this client measured them."""
    if who == "theirs":
        bench = vllm_bench(server, prompts, output_len=tokens, max_concurrency=concurrency)
        return {"throughput": bench.output_throughput, "latency": bench.ms("e2el"), "ttft": bench.ms("ttft"),
                "bench": bench}  # fmt: skip
    load = run_load(server, prompts, concurrency=concurrency, max_tokens=tokens, ignore_eos=True,
                    stream=who == "streamed")  # fmt: skip
    ttfts = [r.ttft for r in load.replies if r.ttft is not None]
    return {
        "throughput": load.tokens_per_second,
        "latency": 1e3 * statistics.median(r.latency for r in load.replies),
        "ttft": 1e3 * statistics.median(ttfts) if ttfts else None,
    }


def paired_ratios(server, prompts, tokens, concurrency, repeats) -> dict:
    """Median over repeats of vLLM's / ours streamed (and / ours plain for throughput), and for each compared
    measure how far either client disagrees with itself from one repeat to the next (self_spread)."""
    runs = []
    for r in range(repeats):
        order = CLIENTS[r % 3 :] + CLIENTS[: r % 3]  # who goes first rotates
        runs.append({who: run_client(who, server, prompts, tokens, concurrency) for who in order})
    row = {what: statistics.median(run["theirs"][what] / run["streamed"][what] for run in runs) for what in COMPARED}
    row["streaming cost"] = statistics.median(run["theirs"]["throughput"] / run["plain"]["throughput"] for run in runs)
    row["self"] = {what: self_spread(runs, what) for what in COMPARED}
    return row | {"bench": runs[-1]["theirs"]["bench"]}


def self_spread(runs: list[dict], what: str) -> float:
    """How much one client disagrees with itself, in the paired ratios' terms: the median over consecutive repeats of
    the larger-over-smaller ratio of its two measurements (>= 1), for whichever client of vLLM's and ours streamed
    disagrees more. 1.3: one repeat typically measured 30 % more than the next, with nothing changed."""
    spreads = []
    for who in ("theirs", "streamed"):
        values = [run[who][what] for run in runs]
        spreads.append(statistics.median(max(a, b) / min(a, b) for a, b in itertools.pairwise(values)))
    return max(spreads)


def agreement_band(spread: float) -> tuple[float, float]:
    """AGREEMENT, widened to the clients' own repeat-to-repeat spread: two clients can't be asked to agree more
    closely than either agrees with itself."""
    low, high = AGREEMENT
    return min(low, 1 / spread), max(high, spread)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--traces", default="fixed,random")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2: the agreement band needs a client's repeat-to-repeat spread")
    _, tokenizer, export_dir = lesson_export("nano")
    traces = {"fixed": fixed_trace(args.requests), "random": random_trace(tokenizer, args.requests)}
    missed = []
    print(
        f"{args.requests} requests x {args.tokens} tokens; median of {args.repeats} paired ratios at concurrency 1, "
        f"{BUSY_REPEATS_FACTOR * args.repeats} above"
    )
    print(
        f"{'trace':>6} {'concurrency':>11} | vLLM's / ours streamed: {'throughput':>10} {'latency':>8} {'TTFT':>6} | "
        f"either client with itself: throughput latency TTFT | vLLM's / ours plain: throughput | "
        f"vLLM's client: TTFT p50/p99, TPOT, ITL (ms)"
    )
    with VLLMServer(export_dir, kv_cache_tokens=2 * args.requests * 128, shared=False, progress=False) as server:
        run_load(server, traces["fixed"][:8], concurrency=8, max_tokens=4)  # warm-up
        for name in args.traces.split(","):
            for c in CONCURRENCY:
                repeats = args.repeats if c == 1 else BUSY_REPEATS_FACTOR * args.repeats
                row = paired_ratios(server, traces[name], args.tokens, c, repeats)
                t, spread = row["bench"], row["self"]
                print(
                    f"{name:>6} {c:>11} | {'':>23} {row['throughput']:>10.2f} {row['latency']:>8.2f} "
                    f"{row['ttft']:>6.2f} | {'':>26} {spread['throughput']:>10.2f} {spread['latency']:>7.2f} "
                    f"{spread['ttft']:>4.2f} | {row['streaming cost']:>30.2f} | "
                    f"{t.ms('ttft'):.1f}/{t.ms('ttft', 99):.1f}, {t.ms('tpot'):.2f}, {t.ms('itl'):.2f}"
                )
                bands = {what: agreement_band(row["self"][what]) for what in COMPARED}
                missed += [
                    f"{name} trace, concurrency {c}: {what} ratio {row[what]:.2f} outside {low:.2f}-{high:.2f}"
                    for what, (low, high) in bands.items()
                    if not low <= row[what] <= high
                ]
    for line in missed:
        print("MISSED:", line)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
