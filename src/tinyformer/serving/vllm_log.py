"""Reading vLLM's log: what it reported (KV capacity) and, when it failed, why, in the lesson's terms."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tinyformer import vllm_rules
from tinyformer.serving.budget import KVBudget

# "CPU KV cache size: 1,280 tokens, Maximum concurrency for 256 tokens per request: 5.00x" (GPU: "GPU KV ...").
KV_LINE = re.compile(
    r"(?P<device>[A-Z]+)(?: \+ host)? KV cache size: (?P<tokens>[\d,]+) tokens, "
    r"Maximum concurrency for (?P<max_model_len>[\d,]+) tokens per request: (?P<concurrency>[\d.]+)x"
)
# Where servers write their logs when set (else artifacts/logs); `make test` points it at test-results/.
LOG_DIR_ENV = "TINYFORMER_VLLM_LOG_DIR"
# The API server's first line of its own: one per start, whether the start then succeeds or fails.
START_LINE = "vLLM server version"
# "(EngineCore pid=1) ERROR 11-23 10:57:22 [core.py:1510] " in front of lines from vLLM's logger.
LOG_PREFIX = re.compile(r"^\([\w-]+ pid=\d+\) (?P<level>[A-Z]+) [\d-]+ [\d:]+ \[[^\]]*\] ?")
ERROR_LINE = re.compile(r"\b(?P<kind>[A-Za-z_.]*(?:Error|Exception)): (?P<text>.+)$")
# What pydantic appends to a config check's reason: " [type=value_error, input_value=ArgsKwargs(...), input_type=...]".
PYDANTIC_DETAILS = re.compile(r" \[type=\w+, input_value=.*\]$")
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # vLLM colours its log when it thinks a terminal is watching
# Wrappers that point elsewhere ("see root cause above") rather than saying what went wrong.
GENERIC_ERRORS = ("Engine core initialization failed", "validation error for", "Engine process failed to start")
# "Iteration(12): 1 context requests, 32 context tokens, 3 generation requests, 3 generation tokens, ..." (logged
# for every engine step when the server runs with --enable-logging-iteration-details).
ITERATION_LINE = re.compile(
    r"Iteration\((?P<index>\d+)\): (?P<context_requests>\d+) context requests, (?P<context_tokens>\d+) context tokens, "
    r"(?P<generation_requests>\d+) generation requests, (?P<generation_tokens>\d+) generation tokens, "
    r"iteration elapsed time: (?P<elapsed_ms>[\d.]+) ms(?: \(dummy\))?, [A-Z]+(?: \+ host)? "
    r"KV cache usage: (?P<kv_cache_percent>[\d.]+)%"
)
# "(Worker_PP1 pid=7) DEBUG ... Loaded weight h.1.attn.c_proj.bias with shape ..." and "... Loaded shard None with
# shape ... into transformer.h.1.attn.c_attn.weight": one line per weight a worker loads, at VLLM_LOGGING_LEVEL=DEBUG.
# GPT-2 names its layers h.N, Llama layers.N.
LOADED_WEIGHT = re.compile(
    r"^\((?P<worker>[\w-]+) pid=\d+\) DEBUG .*\bLoaded (?:weight|shard .* into) "
    r"(?:\S*?\.)?(?:h|layers)\.(?P<layer>\d+)\.",
    re.MULTILINE,
)
# Milestones of a start-up, in order, for the progress bar and lesson 07's start-up picture:
# (text in the log, the milestone the learner sees, what the seconds before it went on).
STAGES = (
    ("non-default args", "API server parsed its arguments", "the API server's process imports vLLM"),
    ("Initializing a V1 LLM engine", "engine process started", "the engine's process starts and imports vLLM"),
    ("Starting to load model", "loading weights", "the engine sets up its worker"),
    ("KV cache size", "KV cache allocated", "weights loaded, a profiling pass sizes the KV cache"),
    ("Starting vLLM server", "HTTP server starting", "the KV cache is allocated, the model warmed up"),
)
READY = ("ready", "the HTTP server starts and /health answers")  # the last milestone: VLLMServer's, not the log's


@dataclass(frozen=True)
class ReportedKV:
    """What vLLM logged about its KV cache (block size and block count come from /metrics when available)."""

    device: str  # "CPU" or "GPU"
    tokens: int
    max_model_len: int
    max_concurrency: float
    block_size: int | None = None
    num_blocks: int | None = None

    def log_line(self) -> str:
        """The line as vLLM logged it."""
        return (
            f"{self.device} KV cache size: {self.tokens:,} tokens, Maximum concurrency for "
            f"{self.max_model_len:,} tokens per request: {self.max_concurrency:.2f}x"
        )


def parse_kv_report(log: str) -> ReportedKV | None:
    """The KV-capacity line of a vLLM log, or None if the engine has not logged it (yet)."""
    match = KV_LINE.search(ANSI_COLOUR.sub("", log))
    if match is None:
        return None
    return ReportedKV(
        device=match["device"],
        tokens=int(match["tokens"].replace(",", "")),
        max_model_len=int(match["max_model_len"].replace(",", "")),
        max_concurrency=float(match["concurrency"]),
    )


@dataclass(frozen=True)
class Iteration:
    """One engine step: one forward pass over the tokens of every request scheduled in it."""

    index: int
    context_requests: int  # requests whose prompt (or a chunk of it) is processed in this step: prefill
    context_tokens: int
    generation_requests: int  # requests that get their next token in this step: decode, one token each
    generation_tokens: int
    elapsed_ms: float
    kv_cache_usage: float  # fraction of the KV blocks in use after the step

    @property
    def tokens(self) -> int:
        return self.context_tokens + self.generation_tokens

    @property
    def requests(self) -> int:
        return self.context_requests + self.generation_requests


def parse_iterations(log: str) -> list[Iteration]:
    """Every engine step the log describes (needs ``--enable-logging-iteration-details``)."""
    steps = []
    for match in ITERATION_LINE.finditer(ANSI_COLOUR.sub("", log)):
        fields = match.groupdict()
        usage = float(fields.pop("kv_cache_percent")) / 100
        elapsed = float(fields.pop("elapsed_ms"))
        steps.append(Iteration(**{k: int(v) for k, v in fields.items()}, elapsed_ms=elapsed, kv_cache_usage=usage))
    return steps


def layers_loaded(log: str) -> dict[str, list[int]]:
    """The transformer layers whose weights each worker loaded, by the name vLLM logs it under ("Worker_PP0", ...;
    "EngineCore" for a worker inside the engine). Needs vLLM's DEBUG log: ``VLLMServer(..., log_level="DEBUG")``."""
    layers: dict[str, set[int]] = {}
    for match in LOADED_WEIGHT.finditer(ANSI_COLOUR.sub("", log)):
        layers.setdefault(match["worker"], set()).add(int(match["layer"]))
    return {worker: sorted(held) for worker, held in sorted(layers.items())}


def startup_stage(log: str) -> str:
    """The last start-up milestone the log shows."""
    reached = stages_reached(log)
    return reached[-1] if reached else "importing vLLM"


def stages_reached(log: str) -> list[str]:
    """The start-up milestones the log shows, in order."""
    return [milestone for marker, milestone, _ in STAGES if marker in log]


def root_cause(log: str) -> str | None:
    """vLLM's own line saying what went wrong: the first specific error in the log (later ones only wrap it)."""
    lines = []
    for raw in ANSI_COLOUR.sub("", log).splitlines():
        prefix = LOG_PREFIX.match(raw)
        if prefix and prefix["level"] not in ("ERROR", "CRITICAL"):
            continue  # warnings may quote errors ("... like `OSError: [Errno 24] Too many open files`")
        lines.append(raw[prefix.end() :].strip() if prefix else raw.strip())
    for line in lines:
        if line.startswith("Value error, "):  # pydantic config validation: the reason is on this line
            return PYDANTIC_DETAILS.sub("", line.removeprefix("Value error, "))
        match = ERROR_LINE.search(line)
        if match and not any(generic in line for generic in GENERIC_ERRORS):
            return f"{match['kind']}: {match['text']}"
    errors = [line for line in lines if ERROR_LINE.search(line)]
    return errors[-1] if errors else None


def explain(cause: str | None, budget: KVBudget | None) -> str:
    """What ``cause`` means for a learner, with vLLM's rounded GiB restated in tokens and bytes."""
    cause = cause or ""
    if m := re.search(r"max_model_len \((\d+)\) is greater than the derived max_model_len", cause):
        n_positions = budget.config.n_positions if budget else "n_positions"
        return (
            f"max_model_len={m[1]} asks for more positions than the model has: its position table (wpe) has "
            f"{n_positions} rows, one per position, so a token at position {n_positions} would have no position "
            f"vector. Use max_model_len <= {n_positions}."
        )
    if "To serve at least one request" in cause or "No available memory for the cache blocks" in cause:
        return _explain_kv_budget(budget)
    if m := re.search(r"Unsupported CPU attention configuration: head_dim=(\d+)", cause):
        return (
            f"vLLM's CPU attention kernel has no code path for head size {m[1]}. Change n_head so that "
            "n_embd / n_head is one of 32, 64, 128, ... and train again."
        )
    if "NUMA nodes to bind threads" in cause:
        return (
            "tensor and pipeline parallelism on CPU run one worker per core group, and vLLM's automatic binding "
            "gives each worker a NUMA node of its own. VLLM_CPU_OMP_THREADS_BIND says which cores each worker gets "
            "instead (e.g. '0|1' for two workers on two cores; VLLMServer sets it when there are enough cores): "
            "use at most as many workers (tensor_parallel_size x pipeline_parallel_size) as the machine has cores."
        )
    if m := re.search(r"attention heads \((\d+)\) must be divisible by tensor parallel size \((\d+)\)", cause):
        return (
            f"tensor parallelism gives each of the {m[2]} workers whole attention heads, and {m[1]} heads do not "
            f"split evenly over {m[2]}. Pick a tensor_parallel_size that divides n_head={m[1]}."
        )
    if "Failed to import Ray" in cause or "does not support ray" in cause:
        return (
            "--distributed-executor-backend ray runs the workers as Ray actors, which needs the `ray` package and, "
            "on vLLM's CPU build, a platform that supports Ray: vllm-cpu 0.32's does not (current platform cpu does "
            "not support ray). Leave the backend out: vLLM's own multiprocessing ('mp') runs every worker on this "
            "machine."
        )
    if "Available memory on node" in cause:
        return "the machine has less free RAM than vLLM was asked to reserve: give a smaller KV budget."
    if "Address already in use" in cause:
        return "another program listens on that port: leave port=None to pick a free one."
    return "see the full log for details."


def _explain_kv_budget(budget: KVBudget | None) -> str:
    if budget is None:
        return "the KV-cache budget is too small for one request of max_model_len tokens."
    held_back = vllm_rules.NULL_BLOCKS * budget.bytes_per_block  # vLLM sets the null block aside first
    left = max(budget.kv_cache_bytes - held_back, 0)
    need = vllm_rules.kv_cache_bytes_needed(budget.max_model_len, budget.bytes_per_token, budget.block_size)
    return (
        f"the KV budget is {budget.kv_cache_bytes:,} bytes ({budget.kv_cache_bytes // budget.bytes_per_token:,} "
        f"tokens x {budget.bytes_per_token:,} B). vLLM first sets one block of {budget.block_size} tokens = "
        f"{budget.bytes_per_block:,} bytes aside as a placeholder, leaving {left:,} bytes "
        f"({left // budget.bytes_per_token:,} tokens), but one request of max_model_len={budget.max_model_len} "
        f"tokens needs {budget.blocks_per_request} block(s) = {budget.bytes_per_request:,} bytes (vLLM rounds both "
        f"to '0.0 GiB'). Give at least {need:,} bytes (kv_cache_tokens={need // budget.bytes_per_token}) or "
        f"lower max_model_len."
    )


def count_starts(folder: str | Path) -> int:
    """How many vLLM servers wrote their log into ``folder`` (each start logs ``START_LINE`` once)."""
    logs = Path(folder).glob("*.log") if Path(folder).is_dir() else []
    return sum(START_LINE in log.read_text(errors="replace") for log in logs)
