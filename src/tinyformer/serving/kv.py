"""KV-cache capacity predicted from a model's config, before any server starts.

vLLM stores keys and values in fixed-size *blocks* of tokens (128 tokens on CPU, 16 on GPUs). For a
GPT-2 model every token of every request needs, in every layer, one key and one value vector of
n_embd numbers:

    bytes per token = 2 (K and V) x n_layer x n_embd x dtype bytes

With tensor parallelism each worker holds n_head / tp heads, so it needs 1/tp of those bytes per
token; the KV budget (``--kv-cache-memory-bytes``) is per worker, so the same bytes hold tp times
the tokens. vLLM then reports

    KV cache size: <tokens> tokens, Maximum concurrency for <max_model_len> tokens per request: <x>x

where x = blocks / blocks needed by one max_model_len request and tokens = x * max_model_len.
``predict_kv_capacity`` reproduces both numbers exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tinyformer.config import VLLM_CPU_HEAD_SIZES, ModelConfig

BLOCK_SIZE = {"cpu": 128, "cuda": 16}  # tokens per KV block in vLLM's attention backends
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


class ServingConfigError(ValueError):
    """A server configuration vLLM would reject (or crash on) later; the message says what to change."""


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ServingConfigError(
            f"dtype={dtype!r}: pass one of {sorted(DTYPE_BYTES)} explicitly. ('auto' lets vLLM pick bfloat16 "
            "on CPU, which halves the bytes per value and changes the outputs slightly.)"
        )
    return DTYPE_BYTES[dtype]


def kv_bytes_per_token(config: ModelConfig, dtype: str = "float32", tensor_parallel_size: int = 1) -> int:
    """Bytes of keys and values one token takes in ONE worker: 2 x n_layer x n_embd x dtype bytes / tp."""
    whole_model = 2 * config.n_layer * config.n_embd * dtype_bytes(dtype)  # K and V, every layer
    return whole_model // tensor_parallel_size  # each worker keeps n_head / tp of the heads


def model_config_from_dir(model_dir: str | Path) -> ModelConfig:
    """The tinyformer ModelConfig of an exported Hugging Face GPT-2 folder (reads its config.json)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no config.json in {model_dir}: export the model first with tinyformer.export.export_hf(model, "
            "tokenizer, out_dir)."
        )
    hf = json.loads(path.read_text())
    if hf.get("model_type") != "gpt2":
        raise ServingConfigError(f"{path} describes a {hf.get('model_type')!r} model; tinyformer serves GPT-2 exports.")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        n_positions=hf["n_positions"],
        n_embd=hf["n_embd"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
    )


@dataclass(frozen=True)
class KVCapacity:
    """What vLLM will allocate for a KV budget, computed the way vLLM computes it."""

    config: ModelConfig
    max_model_len: int
    kv_cache_bytes: int  # per worker, as passed to --kv-cache-memory-bytes
    dtype: str = "float32"
    tensor_parallel_size: int = 1
    block_size: int = BLOCK_SIZE["cpu"]

    @property
    def bytes_per_token(self) -> int:
        """Per worker."""
        return kv_bytes_per_token(self.config, self.dtype, self.tensor_parallel_size)

    @property
    def bytes_per_block(self) -> int:
        return self.block_size * self.bytes_per_token

    @property
    def num_blocks(self) -> int:
        return self.kv_cache_bytes // self.bytes_per_block  # leftover bytes that don't fill a block are unused

    @property
    def usable_blocks(self) -> int:
        """Blocks requests can get: vLLM's block pool holds one block back as a placeholder ("null block")."""
        return max(self.num_blocks - 1, 0)

    @property
    def blocks_per_request(self) -> int:
        """Blocks one request of max_model_len tokens can occupy (a partly filled block is still a block)."""
        return math.ceil(self.max_model_len / self.block_size)

    @property
    def bytes_per_request(self) -> int:
        return self.blocks_per_request * self.bytes_per_block

    @property
    def block_tokens(self) -> int:
        """Token slots in all blocks together."""
        return self.num_blocks * self.block_size

    @property
    def max_concurrency(self) -> float:
        """How many max_model_len requests fit at once: vLLM's "Maximum concurrency ... x"."""
        return self.num_blocks / self.blocks_per_request

    @property
    def tokens(self) -> int:
        """vLLM's "KV cache size: N tokens" (= max_concurrency x max_model_len, the same float maths)."""
        return int(self.num_blocks / self.blocks_per_request * self.max_model_len)

    def log_line(self) -> str:
        """The line vLLM will log, with the CPU/GPU prefix left out."""
        return kv_log_line(self.tokens, self.max_model_len, self.max_concurrency)

    def summary(self) -> str:
        tp = f" per worker (tensor parallel {self.tensor_parallel_size})" if self.tensor_parallel_size > 1 else ""
        return (
            f"{self.kv_cache_bytes:,} bytes{tp} / ({self.block_size} tokens x {self.bytes_per_token:,} B per token) "
            f"= {self.num_blocks} blocks = {self.block_tokens:,} token slots; one {self.max_model_len}-token request "
            f"takes {self.blocks_per_request} block(s) -> {self.log_line()}"
        )


def kv_log_line(tokens: int, max_model_len: int, max_concurrency: float) -> str:
    """vLLM's KV-capacity log line (without its "CPU"/"GPU" prefix)."""
    return (
        f"KV cache size: {tokens:,} tokens, Maximum concurrency for {max_model_len:,} tokens "
        f"per request: {max_concurrency:.2f}x"
    )


def bytes_for_tokens(
    config: ModelConfig,
    tokens: int,
    *,
    dtype: str = "float32",
    tensor_parallel_size: int = 1,
    block_size: int = BLOCK_SIZE["cpu"],
) -> int:
    """Per-worker bytes that hold ``tokens`` token slots, rounded UP to whole blocks."""
    if not isinstance(tokens, int) or tokens <= 0:
        raise ServingConfigError(f"kv_cache_tokens must be a positive integer, got {tokens!r}.")
    blocks = math.ceil(tokens / block_size)
    return blocks * block_size * kv_bytes_per_token(config, dtype, tensor_parallel_size)


def check_serving_config(capacity: KVCapacity, *, device: str = "cpu") -> None:
    """Raise ServingConfigError for what vLLM would reject at start-up or crash on at the first request."""
    config, tp = capacity.config, capacity.tensor_parallel_size
    if device == "cpu" and config.head_dim not in VLLM_CPU_HEAD_SIZES:
        raise ServingConfigError(config.vllm_head_size_message())
    if config.n_head % tp != 0:
        raise ServingConfigError(
            f"tensor_parallel_size={tp} must divide n_head={config.n_head}: each worker holds whole heads."
        )
    if not isinstance(capacity.max_model_len, int) or capacity.max_model_len <= 0:
        raise ServingConfigError(f"max_model_len must be a positive integer, got {capacity.max_model_len!r}.")
    if capacity.max_model_len > config.n_positions:
        raise ServingConfigError(
            f"max_model_len={capacity.max_model_len} is longer than the model's position table "
            f"(n_positions={config.n_positions} rows of wpe): a token at position {config.n_positions} or later "
            f"has no position vector. Use max_model_len <= {config.n_positions}, or train a model with more positions."
        )
    if capacity.num_blocks < 2:
        raise ServingConfigError(
            f"a KV budget of {capacity.kv_cache_bytes:,} bytes leaves no usable block: a block holds "
            f"{capacity.block_size} tokens x {capacity.bytes_per_token:,} B = {capacity.bytes_per_block:,} bytes, and "
            f"vLLM keeps one block back as a placeholder, so it needs at least 2 blocks = "
            f"{2 * capacity.bytes_per_block:,} bytes (kv_cache_tokens={2 * capacity.block_size})."
        )
    if capacity.usable_blocks < capacity.blocks_per_request:
        fits = capacity.usable_blocks * capacity.block_size
        need = capacity.blocks_per_request + 1
        raise ServingConfigError(
            f"a KV budget of {capacity.kv_cache_bytes:,} bytes = {capacity.num_blocks} blocks, of which "
            f"{capacity.usable_blocks} usable = {fits:,} tokens, cannot hold one request of "
            f"max_model_len={capacity.max_model_len} tokens, which needs {capacity.blocks_per_request} blocks "
            f"({capacity.bytes_per_request:,} bytes). Give at least kv_cache_tokens={need * capacity.block_size} "
            f"(kv_cache_bytes={need * capacity.bytes_per_block:,}), or lower max_model_len to {fits}."
        )
