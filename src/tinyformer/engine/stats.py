"""What the engine counts while it runs, kept for as long as the engine lives (counters add up across
``generate`` calls), with one record per step for timeline plots."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepRecord:
    """The scheduler's state after scheduling one step (what vLLM's /metrics gauges show)."""

    step: int
    running: int  # requests holding blocks (vllm:num_requests_running)
    waiting: int  # requests in the queue (vllm:num_requests_waiting)
    blocks_used: int  # blocks held by at least one request
    tokens_held: int  # tokens of the running requests that have (or get, this step) keys and values cached
    scheduled_tokens: int  # tokens run through the model in this step (prefill chunks + one per decode)
    prefill_tokens: int  # of which prompt (or recomputed) tokens
    preempted: int  # requests preempted while scheduling this step


@dataclass
class Stats:
    steps: int = 0
    preemptions: int = 0  # vllm:num_preemptions_total
    peak_blocks_used: int = 0
    peak_running: int = 0
    prefix_cache_query_tokens: int = 0  # vllm:prefix_cache_queries_total: prompt tokens of new requests
    prefix_cache_hit_tokens: int = 0  # vllm:prefix_cache_hits_total: of which served from cached blocks
    recomputed_hit_tokens: int = 0  # cache hits of preempted requests coming back (vLLM counts them apart)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    timeline: list[StepRecord] = field(default_factory=list, repr=False)

    def record(self, record: StepRecord) -> None:
        self.steps += 1
        self.peak_blocks_used = max(self.peak_blocks_used, record.blocks_used)
        self.peak_running = max(self.peak_running, record.running)
        self.timeline.append(record)

    def series(self, name: str) -> list[int]:
        """One field of every step record, e.g. ``stats.series("running")``."""
        return [getattr(r, name) for r in self.timeline]
