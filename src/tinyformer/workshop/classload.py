"""A classroom's worth of load: many learners run the batching lesson's cell at the same moment against one
server, and every learner must get exactly what they get running alone.

Each simulated learner is what the cell does: ``send_load`` of the cell's prompts with the cell's own
client-side concurrency cap (its semaphore). All learners run concurrently in one event loop, so at most
``learners x cell concurrency`` requests are open at once; the server batches, queues and (when its KV
cache is full) preempts them. Loopback only: this is a load generator, so it refuses to aim at another
machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from tinyformer.serving.client import LoadResult, complete, run_coroutine, send_load
from tinyformer.serving.metrics import MetricsSampler


@dataclass(frozen=True)
class BatchingCell:
    """What one learner's run of the batching cell sends: its prompts, its concurrency cap, its output length."""

    prompts: tuple[str, ...]
    concurrency: int
    max_tokens: int
    extra: dict = field(default_factory=dict)  # e.g. {"ignore_eos": True}

    def send(self, server):
        return send_load(
            server, list(self.prompts), concurrency=self.concurrency, max_tokens=self.max_tokens, **self.extra
        )


@dataclass
class ClassLoadReport:
    learners: int
    requests: int
    failures: int
    learners_matching_solo: int
    latencies: list[float]  # seconds, every request of every learner
    learner_seconds: list[float]  # how long each learner's cell took
    seconds: float  # wall time of the whole class
    kv_usage_peak: float  # fraction of the KV cache in use, highest sample
    running_peak: float
    waiting_peak: float
    preemptions: float
    first_failure: str | None = None

    @property
    def all_match_solo(self) -> bool:
        return self.learners_matching_solo == self.learners

    def latency(self, percentile: int) -> float:
        """Request latency at ``percentile`` (1..99), in seconds: 50 is the median, 95 the slowest 5 % start."""
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[percentile - 1]

    def table(self) -> str:
        rows = [
            ("learners at once", f"{self.learners}"),
            ("requests", f"{self.requests:,}"),
            ("failed requests", f"{self.failures}"),
            ("learners with the same tokens as alone", f"{self.learners_matching_solo} / {self.learners}"),
            ("request latency p50", f"{self.latency(50):.2f} s"),
            ("request latency p95", f"{self.latency(95):.2f} s"),
            (
                "learner's cell p50 / max",
                f"{statistics.median(self.learner_seconds):.2f} / {max(self.learner_seconds):.2f} s",
            ),
            ("whole class", f"{self.seconds:.2f} s"),
            ("KV-cache usage peak", f"{100 * self.kv_usage_peak:.1f} %"),
            ("requests running peak", f"{self.running_peak:.0f}"),
            ("requests waiting peak", f"{self.waiting_peak:.0f}"),
            ("preemptions", f"{self.preemptions:.0f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def batching_cell() -> BatchingCell:
    """Notebook 09's batching cell (section 1), as each learner runs it: the lesson's first 32 prompts, all 32 in
    flight at once, 24 new tokens each (tests/test_workshop_server.py checks this matches the notebook)."""
    import random

    from tinyformer.data import Corpus

    rng = random.Random(0)
    prompts = [" ".join(words[: rng.randint(2, 6)]) for words in Corpus(seed=9).sentences(200)]
    return BatchingCell(tuple(prompts[:32]), concurrency=32, max_tokens=24, extra={"ignore_eos": True})


def simulate_class(server, cell: BatchingCell, learners: int = 50, *, sample_every: float = 0.1) -> ClassLoadReport:
    """Send each of the cell's prompts alone (the reference), then run the cell for ``learners`` learners at
    once; compare every learner's tokens with the reference and measure latency and the server's queues."""
    if learners < 1:
        raise ValueError(f"learners must be at least 1, got {learners}.")
    _require_loopback(server.url)
    expected = [complete(server, p, max_tokens=cell.max_tokens, **cell.extra).token_ids for p in cell.prompts]

    async def whole_class() -> list[LoadResult]:
        return list(await asyncio.gather(*(cell.send(server) for _ in range(learners))))

    with MetricsSampler(server, interval=sample_every) as sampler:
        start = time.perf_counter()
        results = run_coroutine(whole_class)
        seconds = time.perf_counter() - start
    failures = [reply for result in results for reply in result.failures]
    return ClassLoadReport(
        learners=learners,
        requests=sum(len(result.replies) for result in results),
        failures=len(failures),
        learners_matching_solo=sum([r.token_ids for r in result.replies] == expected for result in results),
        latencies=[reply.latency for result in results for reply in result.replies],
        learner_seconds=[result.seconds for result in results],
        seconds=seconds,
        kv_usage_peak=sampler.max("vllm:kv_cache_usage_perc"),
        running_peak=sampler.max("vllm:num_requests_running"),
        waiting_peak=sampler.max("vllm:num_requests_waiting"),
        preemptions=sampler.increase("vllm:num_preemptions_total"),
        first_failure=failures[0].error if failures else None,
    )


def _require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"simulate_class only loads a server on this machine (127.0.0.1), not {url}: a simulated class must "
            "not flood a shared server. Start one locally (tinyformer workshop serve ...) and aim at it."
        )
