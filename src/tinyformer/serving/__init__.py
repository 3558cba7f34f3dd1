"""Serving the learner's exported model with a real vLLM server (lessons 07-09).

server.py   VLLMServer: start, wait for health, always stop the whole process group; shared-server mode
kv.py       KV-cache capacity predicted from the model config, and the up-front refusals
vllm_log.py what vLLM reported (KV capacity) and why it failed, in the lesson's terms
client.py   completions (openai client), /tokenize, an asyncio load generator capped by a semaphore
metrics.py  /metrics parsed with prometheus_client, sampled in the background during a load
cli.py      `tinyformer serve`
"""

from tinyformer.serving.client import LoadResult, Reply, RequestRejected, complete, run_load, send_load, tokenize
from tinyformer.serving.kv import (
    BLOCK_SIZE,
    KVBudget,
    ServingConfigError,
    bytes_for_tokens,
    check_serving_config,
    kv_bytes_per_token,
    model_config_from_dir,
)
from tinyformer.serving.metrics import WATCHED, MetricsSampler, cache_config, read_metrics
from tinyformer.serving.server import STARTED_PROCESS_GROUPS, VLLMServer, VLLMStartupError
from tinyformer.serving.vllm_log import ReportedKV

__all__ = [
    "BLOCK_SIZE",
    "STARTED_PROCESS_GROUPS",
    "WATCHED",
    "KVBudget",
    "LoadResult",
    "MetricsSampler",
    "Reply",
    "ReportedKV",
    "RequestRejected",
    "ServingConfigError",
    "VLLMServer",
    "VLLMStartupError",
    "bytes_for_tokens",
    "cache_config",
    "check_serving_config",
    "complete",
    "kv_bytes_per_token",
    "model_config_from_dir",
    "read_metrics",
    "run_load",
    "send_load",
    "tokenize",
]
