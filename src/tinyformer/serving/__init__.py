"""Serving the learner's exported model with a real vLLM server (lessons 07-09).

server.py    VLLMServer: start, wait for health, always stop the whole process group; shared-server mode;
             an API key off loopback, a free port that stays ours
process.py   the process group: started in its own session under the watchdog, stopped whole (SIGTERM, grace,
             SIGKILL), the processes listening on a port
watchdog.py  the process-group leader that stops vLLM if this Python process dies without cleaning up,
             and stops the engine if vLLM's API process dies
guard.py     the API key on every route but GET /health (vLLM's own --api-key guards /v1 only)
budget.py    KVBudget: the capacity vLLM will report, predicted from the model config; up-front refusals
             (vLLM's rules themselves live in tinyformer.vllm_rules)
vllm_log.py  what vLLM logged: KV capacity, engine steps, and why a start failed, in the lesson's terms
client.py    completions (openai client), /tokenize, an asyncio load generator capped by a semaphore
bench.py     vLLM's own benchmark client (`vllm bench serve`) on our trace: TTFT, TPOT, ITL percentiles
embeddings.py /v1/embeddings of an embedding server (pooling=...), once or as a semaphore-capped load; pictures too
offline.py   vLLM's offline engine (vllm.LLM) in this process, with VLLMServer's settings: no server, no spawn
metrics.py   /metrics parsed with prometheus_client, sampled in the background during a load
prepare.py   the lessons' model, trained if needed and exported for vLLM
cli.py       `tinyformer serve` (keys from --api-key-file, never the command line)
command_lines.py  a `vllm serve` / `docker run vllm/vllm-openai` line read by vLLM's own argument parser

Names are imported on first use, so `tinyformer --help` (which imports cli.py) stays instant.
"""

from __future__ import annotations

from tinyformer.lazy import lazy_names

_HOMES = {
    "client": (
        "LoadResult",
        "Reply",
        "RequestRejected",
        "chat_with_images",
        "complete",
        "image_message",
        "png_data_url",
        "run_coroutine",
        "run_load",
        "send_load",
        "tokenize",
    ),
    "budget": (
        "BLOCK_SIZE",
        "KVBudget",
        "ServingConfigError",
        "bytes_for_tokens",
        "check_serving_config",
        "kv_bytes_per_token",
        "model_config_from_dir",
    ),
    "bench": ("BenchResult", "vllm_bench"),
    "embeddings": ("EmbeddingLoad", "embeddings", "image_embedding", "run_embedding_load", "send_embedding_load"),
    "offline": ("engine_settings", "iterations_logged", "llm_settings", "metrics_text", "offline_llm", "reported_kv"),
    "metrics": ("WATCHED", "MetricsSampler", "cache_config", "read_metrics"),
    "process": ("STARTED_PROCESS_GROUPS",),
    "server": (
        "VLLMServer",
        "VLLMStartupError",
        "own_server_allowed",
        "using_shared_server",
    ),
    "vllm_log": ("Iteration", "ReportedKV"),
}
__getattr__, __dir__, __all__ = lazy_names(__name__, {f"tinyformer.serving.{m}": names for m, names in _HOMES.items()})
