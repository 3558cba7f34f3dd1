"""A KV budget for one server: what vLLM will make of it, and what it would refuse.

vLLM's rules live in :mod:`tinyformer.vllm_rules` (blocks, the null block, the capacity line, its refusals)
and the bytes-per-token formula in :mod:`tinyformer.memory.formulas`; this module applies them to a
model folder and a server's settings, and words the refusals in the lesson's terms:

* ``kv_cache_tokens`` -> ``--kv-cache-memory-bytes``, rounded up to whole blocks;
* :class:`KVBudget`: the capacity vLLM will report (``KV cache size: N tokens, Maximum concurrency
  for M tokens per request: X x``), computed before the server starts;
* :func:`check_serving_config`: the settings vLLM would reject at start-up (or crash on at the first
  request), refused up front with a message in tokens and bytes.

With tensor parallelism each worker keeps the keys and values of n_kv_head / tp heads, so a token costs
each worker 1/tp of the bytes; the budget is per worker, so the same bytes hold tp times the tokens. With pipeline
parallelism each worker holds the layers of its stage only (n_layer / pp of them), so the same bytes again hold pp
times the tokens; vLLM gives every worker the blocks of the fullest stage. Likewise grouped-query attention (a llama
export, lesson 14) caches n_kv_head heads instead of n_head: the same bytes hold n_head / n_kv_head times the tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tinyformer import vllm_rules
from tinyformer.config import HF_NAMES, ModelConfig, sizes_from_hf
from tinyformer.memory.architecture import stage_layer_counts
from tinyformer.memory.formulas import kv_bytes_per_token as kv_formula
from tinyformer.vllm_rules import BLOCK_SIZE


class ServingConfigError(ValueError):
    """A server configuration vLLM would reject (or crash on) later; the message says what to change."""


def kv_bytes_per_token(
    config: ModelConfig, dtype: str = "float32", tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1
) -> int:
    """Bytes of keys and values one token takes in ONE worker: 2 x stage layers x n_kv_head x head_dim x dtype bytes
    / tp (n_kv_head x head_dim = n_embd for multi-head attention; grouped-query attention divides it by the group
    size). Stage layers: n_layer without pipeline parallelism, else the layers of the fullest pipeline stage, whose
    worker fits the fewest blocks in its budget: vLLM gives every worker that many (get_kv_cache_configs).

    The formula is :func:`tinyformer.memory.formulas.kv_bytes_per_token` and the split of layers over stages
    :func:`tinyformer.memory.architecture.stage_layer_counts`; this reads the sizes off a ModelConfig and refuses
    vLLM's ``dtype='auto'``, whose size depends on the machine."""
    if dtype == "auto":
        raise ServingConfigError(
            "dtype='auto' lets vLLM pick bfloat16 on CPU (2 bytes per value, slightly different outputs); "
            "pass dtype='float32' or 'bfloat16' explicitly so the KV budget can be computed."
        )
    layers = max(stage_layer_counts(config.n_layer, pipeline_parallel_size))
    return kv_formula(layers, config.n_kv_head, config.head_dim, dtype, tensor_parallel_size)


def read_config_json(model_dir: str | Path) -> dict:
    """The JSON object in ``model_dir/config.json``; a missing, unreadable or non-object file says what to do."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no config.json in {model_dir}: export the model first with tinyformer.export.export_hf(model, "
            "tokenizer, out_dir) or `tinyformer export`."
        )
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ServingConfigError(f"{path} is not valid JSON ({error}); export the model again.") from None
    if not isinstance(hf, dict):
        raise ServingConfigError(
            f"{path} holds a JSON {type(hf).__name__}, not the object of settings an export writes; export the model "
            "again (`tinyformer export CHECKPOINT --out DIR --overwrite`)."
        )
    return hf


def model_config_from_dir(model_dir: str | Path) -> ModelConfig:
    """The tinyformer ModelConfig of an exported Hugging Face folder (reads its config.json).

    A GPT-2 export (lessons 07-09), a Llama export (lesson 14), or a LLaVA export (lesson 10): then the config of
    its OPT language model, the part that holds the KV cache and sets the positions."""
    path = Path(model_dir) / "config.json"
    hf = read_config_json(model_dir)
    text = hf.get("text_config", {}) if hf.get("model_type") == "llava" else {}
    if text.get("model_type") == "opt":  # a LLaVA export (lesson 10): its language model holds the KV cache
        return ModelConfig(**sizes_from_hf(text, *TEXT_SIZES))
    if hf.get("model_type") == "llama":
        return _llama_config(hf, path)
    # vLLM picks its model code by `architectures`: a GPT-2 under a config class of its own (remote code) is GPT-2
    if hf.get("model_type") != "gpt2" and hf.get("architectures") != ["GPT2LMHeadModel"]:
        kind = hf.get("model_type")
        raise ServingConfigError(
            f"{path} describes a {kind!r} model; tinyformer serves GPT-2 and Llama exports, and LLaVA exports with "
            "an OPT language model (tinyformer.export.llava.export_llava)."
        )
    missing = [f for f in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if f not in hf]
    if missing:
        raise ServingConfigError(
            f"{path} lacks {missing}: it was not written by export_hf, or was edited. Export the model again "
            "(`tinyformer export CHECKPOINT --out DIR --overwrite`)."
        )
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        n_positions=hf["n_positions"],
        n_embd=hf["n_embd"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
    )


TEXT_SIZES = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")  # what an OPT or Llama config.json must give
LLAMA_FIELDS = tuple(HF_NAMES[field] for field in TEXT_SIZES)


def _llama_config(hf: dict, path: Path) -> ModelConfig:
    """The llama-arch ModelConfig of a LlamaForCausalLM export (its head size must be hidden_size / heads)."""
    missing = [f for f in LLAMA_FIELDS if f not in hf]
    if missing:
        raise ServingConfigError(f"{path} lacks {missing}: export the model again with export_hf.")
    config = ModelConfig(
        **sizes_from_hf(hf, *TEXT_SIZES),
        n_kv_head=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        layer_norm_epsilon=hf.get("rms_norm_eps", 1e-5),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        arch="llama",
    )
    if hf.get("head_dim", config.head_dim) != config.head_dim:
        raise ServingConfigError(
            f"{path} has head_dim={hf['head_dim']}, not hidden_size / num_attention_heads = {config.head_dim}: "
            "tinyformer's KV budget assumes the two agree (every export_hf folder does)."
        )
    return config


@dataclass(frozen=True)
class KVBudget:
    """``kv_cache_bytes`` (per worker) for a model served with ``max_model_len``: what vLLM will allocate."""

    config: ModelConfig
    max_model_len: int
    kv_cache_bytes: int
    dtype: str = "float32"
    tensor_parallel_size: int = 1
    device: str = "cpu"  # "cpu" (vLLM's CPU backend) or "cuda"
    block_size: int | None = None  # tokens per block; None: vLLM's default for the device (CPU 128, GPU 16)
    pipeline_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.block_size is None:
            object.__setattr__(self, "block_size", BLOCK_SIZE[self.device])

    @property
    def workers(self) -> int:
        """Worker processes vLLM runs: one per tensor-parallel rank of each pipeline stage."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def stage_layers(self) -> list[int]:
        """The layers each pipeline stage's workers hold (one stage: all of them)."""
        return stage_layer_counts(self.config.n_layer, self.pipeline_parallel_size)

    @property
    def bytes_per_token(self) -> int:
        """Per worker (of the fullest pipeline stage)."""
        return kv_bytes_per_token(self.config, self.dtype, self.tensor_parallel_size, self.pipeline_parallel_size)

    @property
    def capacity(self) -> vllm_rules.KVCapacity:
        return vllm_rules.vllm_kv_capacity(
            self.kv_cache_bytes, self.bytes_per_token, self.block_size, self.max_model_len
        )

    @property
    def bytes_per_block(self) -> int:
        return self.capacity.bytes_per_block

    @property
    def num_blocks(self) -> int:
        return self.capacity.num_blocks

    @property
    def usable_blocks(self) -> int:
        """Blocks requests can get: vLLM's block pool holds one back as a placeholder (the "null block")."""
        return self.capacity.usable_blocks

    @property
    def blocks_per_request(self) -> int:
        """Blocks one max_model_len request can occupy (a partly filled block is still a block)."""
        return self.capacity.blocks_per_request

    @property
    def bytes_per_request(self) -> int:
        return self.blocks_per_request * self.bytes_per_block

    @property
    def max_concurrency(self) -> float:
        """vLLM's "Maximum concurrency for <max_model_len> tokens per request: <x>x"."""
        return self.capacity.max_concurrency

    @property
    def tokens(self) -> int:
        """vLLM's "KV cache size: <tokens> tokens" (= max_concurrency x max_model_len)."""
        return self.capacity.tokens

    def log_line(self) -> str:
        """The line vLLM will log."""
        return self.capacity.log_line(self.device)

    def summary(self) -> str:
        split = [f"tensor parallel {self.tensor_parallel_size}"] if self.tensor_parallel_size > 1 else []
        if self.pipeline_parallel_size > 1:
            split.append(f"pipeline parallel {self.pipeline_parallel_size}: layers {self.stage_layers}")
        per_worker = f" per worker ({', '.join(split)})" if split else ""
        return (
            f"{self.kv_cache_bytes:,} bytes{per_worker} / ({self.block_size} tokens x {self.bytes_per_token:,} B per "
            f"token) = {self.num_blocks} blocks; a {self.max_model_len}-token request takes {self.blocks_per_request} "
            f"block(s) -> {self.log_line()}"
        )


def bytes_for_tokens(
    config: ModelConfig,
    tokens: int,
    *,
    dtype: str = "float32",
    tensor_parallel_size: int = 1,
    block_size: int = BLOCK_SIZE["cpu"],
    pipeline_parallel_size: int = 1,
) -> int:
    """Per-worker bytes that hold ``tokens`` token slots, rounded UP to whole blocks."""
    if not isinstance(tokens, int) or tokens <= 0:
        raise ServingConfigError(f"kv_cache_tokens must be a positive integer, got {tokens!r}.")
    per_token = kv_bytes_per_token(config, dtype, tensor_parallel_size, pipeline_parallel_size)
    return vllm_rules.bytes_for_tokens(tokens, per_token, block_size)


def check_serving_config(budget: KVBudget) -> None:
    """Raise ServingConfigError for what vLLM would reject at start-up or crash on at the first request.

    The rules are :mod:`tinyformer.vllm_rules`'; the messages restate them in tokens and bytes, and quote
    what vLLM itself would say."""
    config, tp = budget.config, budget.tensor_parallel_size
    if not vllm_rules.head_size_supported(config.head_dim, budget.device):
        raise ServingConfigError(config.vllm_head_size_message())
    if not vllm_rules.block_size_supported(budget.block_size, budget.device):
        raise ServingConfigError(
            f"block_size={budget.block_size}: vLLM's CPU backend needs a multiple of {vllm_rules.CPU_BLOCK_MULTIPLE}."
        )
    if vllm_rules.tensor_parallel_refusal(config.n_head, tp):
        raise ServingConfigError(
            f"tensor_parallel_size={tp} must divide n_head={config.n_head}: each worker holds whole heads. vLLM "
            f"would say: {vllm_rules.tensor_parallel_refusal(config.n_head, tp).vllm_says}"
        )
    if budget.pipeline_parallel_size > config.n_layer:
        raise ServingConfigError(
            f"pipeline_parallel_size={budget.pipeline_parallel_size} is more stages than the model has layers "
            f"(n_layer={config.n_layer}): each stage holds whole layers, so some stage would hold none. Use at most "
            f"{config.n_layer}."
        )
    if not isinstance(budget.max_model_len, int) or budget.max_model_len <= 0:
        raise ServingConfigError(f"max_model_len must be a positive integer, got {budget.max_model_len!r}.")
    if vllm_rules.max_model_len_refusal(budget.max_model_len, config.n_positions):
        raise ServingConfigError(
            f"max_model_len={budget.max_model_len} is longer than the model's position table "
            f"(n_positions={config.n_positions} rows of wpe): a token at position {config.n_positions} or later "
            f"has no position vector. Use max_model_len <= {config.n_positions}, or train a model with more positions."
        )
    refusal = vllm_rules.kv_budget_refusal(
        budget.kv_cache_bytes, budget.bytes_per_token, budget.block_size, budget.max_model_len
    )
    if refusal is None:
        return
    need = budget.blocks_per_request + vllm_rules.NULL_BLOCKS
    give = f"kv_cache_tokens={need * budget.block_size} (kv_cache_bytes={need * budget.bytes_per_block:,})"
    if budget.usable_blocks == 0:
        raise ServingConfigError(
            f"a KV budget of {budget.kv_cache_bytes:,} bytes leaves no usable block: a block holds "
            f"{budget.block_size} tokens x {budget.bytes_per_token:,} B = {budget.bytes_per_block:,} bytes, and "
            f"vLLM keeps one block back as a placeholder, so it needs at least 2 blocks = "
            f"{2 * budget.bytes_per_block:,} bytes (kv_cache_tokens={2 * budget.block_size}); one request of "
            f"max_model_len={budget.max_model_len} needs {give}. vLLM would say: {refusal.vllm_says}"
        )
    fits = budget.usable_blocks * budget.block_size
    raise ServingConfigError(
        f"a KV budget of {budget.kv_cache_bytes:,} bytes = {budget.num_blocks} blocks, of which "
        f"{budget.usable_blocks} usable = {fits:,} tokens, cannot hold one request of "
        f"max_model_len={budget.max_model_len} tokens, which needs {budget.blocks_per_request} blocks "
        f"({budget.bytes_per_request:,} bytes). Give at least {give}, or lower max_model_len to {fits}. "
        f"vLLM would say: {refusal.vllm_says}"
    )
