"""vLLM's /metrics (Prometheus text format), read with prometheus_client's parser and sampled over time.

with MetricsSampler(server, interval=0.1) as sampler:
    run_load(server, prompts, concurrency=32)
times, waiting = sampler.series("vllm:num_requests_waiting")
"""

from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

# What the batching lesson watches: the scheduler's queues, the KV cache, preemptions, token counters.
WATCHED = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)


def _base_url(server) -> str:
    """A VLLMServer (anything with .url) or a URL string."""
    return (getattr(server, "url", None) or str(server)).rstrip("/")


def scrape(server, client: httpx.Client | None = None) -> str:
    """The raw /metrics text. vLLM leaves /metrics open on a loopback server with an API key; a server on the
    network wants the key there too, so a VLLMServer's headers go along."""
    get = client.get if client is not None else httpx.get
    response = get(f"{_base_url(server)}/metrics", headers=getattr(server, "headers", {}), timeout=10.0)
    response.raise_for_status()
    return response.text


def parse_metrics(text: str, names: tuple[str, ...] | None = WATCHED) -> dict[str, float]:
    """{sample name: value}, summed over label sets (e.g. one engine, one model). ``names=None`` keeps all."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if names is None or sample.name in names:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def metric_labels(text: str, name: str) -> dict[str, str]:
    """Labels of the first sample called ``name`` (vLLM publishes its configuration this way, e.g.
    ``vllm:cache_config_info{block_size="128", num_gpu_blocks="10", ...} 1``); {} if absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return dict(sample.labels)
    return {}


def lora_steps(text: str) -> list[tuple[int, set[str], set[str]]]:
    """(max_loras, running adapters, waiting adapters) of every distinct state ``vllm:lora_requests_info`` recorded
    (a server with LoRA on keeps one sample per label set it has seen, valued by when it was last seen)."""
    seen = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:lora_requests_info":
                labels = sample.labels
                split = lambda names: {n for n in names.split(",") if n}  # noqa: E731 - "a,b" -> {"a", "b"}
                seen.append(
                    (
                        int(labels["max_lora"]),
                        split(labels["running_lora_adapters"]),
                        split(labels["waiting_lora_adapters"]),
                    )
                )
    return seen


def histogram(text: str, name: str) -> dict[float, float]:
    """{upper bound "le": cumulative count} of a Prometheus histogram, summed over its other labels."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return dict(sorted(buckets.items()))


def read_metrics(server, names: tuple[str, ...] | None = WATCHED) -> dict[str, float]:
    return parse_metrics(scrape(server), names)


def cache_config(server) -> dict[str, str]:
    """vLLM's KV-cache configuration as it published it: block_size, num_gpu_blocks, kv_cache_size_tokens, ..."""
    return metric_labels(scrape(server), "vllm:cache_config_info")


class MetricsSampler:
    """Reads /metrics every ``interval`` seconds in a background thread while the ``with`` block runs.

    ``samples`` is a list of {"t": seconds since start, name: value, ...}.
    """

    def __init__(self, server, interval: float = 0.1, names: tuple[str, ...] = WATCHED):
        self.server, self.url, self.interval, self.names = server, _base_url(server), interval, names
        self.samples: list[dict[str, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MetricsSampler:
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="vllm-metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once(httpx.Client())  # one last reading after the load, so counters show their totals

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                self._sample_once(client)
                self._stop.wait(self.interval)

    def _sample_once(self, client: httpx.Client) -> None:
        try:
            values = parse_metrics(scrape(self.server, client), self.names)
        except httpx.HTTPError as e:  # keep sampling; the lesson shows what it got
            self.errors.append(f"{type(e).__name__}: {e}")
            return
        self.samples.append({"t": time.perf_counter() - self._start, **values})

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """(times, values) of one metric across the samples."""
        rows = [row for row in self.samples if name in row]
        return [row["t"] for row in rows], [row[name] for row in rows]

    def max(self, name: str) -> float:
        return max(self.series(name)[1], default=0.0)

    def increase(self, name: str) -> float:
        """How much a counter grew between the first and the last sample."""
        values = self.series(name)[1]
        return values[-1] - values[0] if values else 0.0


# Speculative decoding's counters (vllm/v1/spec_decode/metrics.py in vLLM 0.32), as tinyformer's SpecStats names them.
SPEC_DECODE_COUNTERS = {
    "num_drafts": "vllm:spec_decode_num_drafts_total",
    "num_draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "num_accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total",
}
ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"  # one sample per draft position


def spec_decode_counters(text: str) -> dict:
    """vLLM's speculative-decoding counters from a /metrics text: num_drafts, num_draft_tokens,
    num_accepted_tokens and accepted_per_pos (a list, position 0 first); {} when the server does not speculate."""
    values = parse_metrics(text, (*SPEC_DECODE_COUNTERS.values(), ACCEPTED_PER_POS))
    if not values:
        return {}
    counters = {ours: int(values.get(name, 0)) for ours, name in SPEC_DECODE_COUNTERS.items()}
    per_pos: dict[int, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == ACCEPTED_PER_POS:
                position = int(sample.labels["position"])
                per_pos[position] = per_pos.get(position, 0) + int(sample.value)
    counters["accepted_per_pos"] = [per_pos[p] for p in sorted(per_pos)]
    return counters


def counters_between(before: dict, after: dict) -> dict:
    """What ``spec_decode_counters`` grew by between two scrapes (per position too): one load's share."""
    return {
        key: [a - b for a, b in zip(value, before[key], strict=True)]
        if isinstance(value, list)
        else value - before[key]
        for key, value in after.items()
    }
