"""Where the memory goes: byte formulas for a transformer, and measurements that check them.

Formulas (pure functions of sizes, documented with their maths):

* the attention score matrix of a naive implementation: ``batch x heads x n x n x dtype bytes`` per layer;
* the KV cache: ``2 (K and V) x n_layer x n_kv_heads x head_dim x dtype bytes`` per token;
* weights: parameters x bytes per parameter of the dtype (fp32 4, bf16/fp16 2, fp8/int8 1, int4 0.5);
* one forward pass of the tinyformer model (activations);
* vLLM's KV-cache capacity ("KV cache size: N tokens", "Maximum concurrency ... X x") from a KV budget,
  and a whole serving configuration on a GPU (:func:`plan_serving`).

Measurements (on the device the learner has):

* :func:`peak_bytes` runs a function and returns the most bytes that were allocated at once: on CPU from
  ``torch.profiler``'s memory events (every tensor allocation and free, in order), on CUDA from
  ``torch.cuda.max_memory_allocated``. Both count tensor bytes, not the process's noisy RSS.
* :func:`naive_attention` materialises the n x n score matrix; ``F.scaled_dot_product_attention`` (fused)
  does not, and :func:`measure_attention` shows the difference.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import torch
import torch.nn.functional as F

from tinyformer.vision_memory import VisionSpec, profile_images, vision_activation_bytes

GiB = 1024**3
MiB = 1024**2

# Bytes per stored number. int4 packs two numbers in a byte.
DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
_DTYPE_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# vLLM's KV-cache block (page) size in tokens: 16 on NVIDIA GPUs, 128 on the CPU backend.
GPU_BLOCK_SIZE = 16
CPU_BLOCK_SIZE = 128


def dtype_name(dtype) -> str:
    """The short name ("fp32", "bf16", ...) of a dtype given as a name or a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    name = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPE_BYTES)} (or a torch.dtype).")
    return name


def dtype_bytes(dtype) -> float:
    """Bytes per number: fp32 4, bf16/fp16 2, fp8/int8 1, int4 0.5. Numbers pass through unchanged."""
    if isinstance(dtype, (int, float)) and not isinstance(dtype, bool):
        if dtype <= 0:
            raise ValueError(f"dtype bytes must be positive, got {dtype}.")
        return dtype
    return DTYPE_BYTES[dtype_name(dtype)]


def _positive(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


# --------------------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------------------


def attention_scores_bytes(seq_len: int, n_head: int, batch: int = 1, dtype=4, query_len: int | None = None) -> int:
    """Bytes of one layer's attention score matrix in a naive implementation.

    ``batch x n_head x query_len x seq_len x dtype bytes`` (query_len defaults to seq_len: a prefill of n
    tokens makes an n x n matrix per head). Doubling n quadruples it. Fused kernels (FlashAttention,
    ``F.scaled_dot_product_attention``) compute it block by block and never hold it all.
    """
    query_len = seq_len if query_len is None else query_len
    _positive(seq_len=seq_len, n_head=n_head, batch=batch, query_len=query_len)
    return math.ceil(batch * n_head * query_len * seq_len * dtype_bytes(dtype))


def kv_bytes_per_token(n_layer: int, n_kv_heads: int, head_dim: int, dtype=4, tensor_parallel_size: int = 1) -> int:
    """KV-cache bytes one token adds (on one tensor-parallel rank).

    ``2 (K and V) x n_layer x n_kv_heads x head_dim x dtype bytes``. With tensor parallelism each rank
    holds ``max(1, n_kv_heads // tensor_parallel_size)`` heads (vLLM replicates a head when there are
    fewer KV heads than ranks). For GPT-2 style models n_kv_heads x head_dim = n_embd.
    """
    _positive(n_layer=n_layer, n_kv_heads=n_kv_heads, head_dim=head_dim, tensor_parallel_size=tensor_parallel_size)
    heads_per_rank = max(1, n_kv_heads // tensor_parallel_size)
    return math.ceil(2 * n_layer * heads_per_rank * head_dim * dtype_bytes(dtype))


def kv_cache_bytes(n_tokens: int, n_layer: int, n_kv_heads: int, head_dim: int, dtype=4, batch: int = 1) -> int:
    """KV-cache bytes of ``batch`` sequences of ``n_tokens`` each: grows linearly with tokens."""
    if not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be a non-negative integer, got {n_tokens!r}.")
    _positive(batch=batch)
    return batch * n_tokens * kv_bytes_per_token(n_layer, n_kv_heads, head_dim, dtype)


def weight_bytes(n_params: int, dtype=4) -> int:
    """Bytes of ``n_params`` weights stored in ``dtype``: n_params x (4, 2, 1 or 0.5)."""
    if not isinstance(n_params, int) or n_params < 0:
        raise ValueError(f"n_params must be a non-negative integer, got {n_params!r}.")
    return math.ceil(n_params * dtype_bytes(dtype))


def kv_cache_blocks(kv_bytes: int, bytes_per_token: int, block_size: int) -> int:
    """How many whole KV blocks fit in ``kv_bytes``: floor(kv_bytes / (block_size x bytes_per_token)).

    vLLM allocates the cache in blocks (pages) of ``block_size`` tokens for all layers at once;
    leftover bytes smaller than a block are unused.
    """
    _positive(bytes_per_token=bytes_per_token, block_size=block_size)
    if kv_bytes < 0:
        raise ValueError(f"kv_bytes must be >= 0, got {kv_bytes}.")
    return int(kv_bytes) // (block_size * bytes_per_token)


def kv_cache_tokens(kv_bytes: int, bytes_per_token: int, block_size: int, max_model_len: int | None = None) -> int:
    """The "KV cache size: N tokens" vLLM reports for a KV budget of ``kv_bytes`` (per rank).

    ``blocks x block_size`` when ``max_model_len`` is a multiple of the block size (or not given).
    vLLM actually reports ``int(max_concurrency x max_model_len)`` (see :func:`vllm_kv_capacity`),
    which is smaller when a request's last block is only partly used.
    """
    if max_model_len is None:
        return kv_cache_blocks(kv_bytes, bytes_per_token, block_size) * block_size
    return vllm_kv_capacity(kv_bytes, bytes_per_token, block_size, max_model_len).tokens


@dataclass(frozen=True)
class KVCapacity:
    """What vLLM logs after sizing its KV cache (per rank; every rank gets the same)."""

    num_blocks: int
    block_size: int
    max_model_len: int
    bytes_per_token: int

    @property
    def blocks_per_request(self) -> int:
        """Blocks one request of max_model_len tokens needs: ceil(max_model_len / block_size)."""
        return -(-self.max_model_len // self.block_size)

    @property
    def max_concurrency(self) -> float:
        """How many max_model_len requests fit at once: num_blocks / blocks_per_request."""
        return self.num_blocks / self.blocks_per_request

    @property
    def tokens(self) -> int:
        """vLLM's "KV cache size": int(max_concurrency x max_model_len), as vLLM computes it."""
        return int(self.max_concurrency * self.max_model_len)

    @property
    def kv_bytes_used(self) -> int:
        return self.num_blocks * self.block_size * self.bytes_per_token

    def log_line(self, device: str = "GPU") -> str:
        """The line vLLM prints, e.g. ``CPU KV cache size: 1,280 tokens, Maximum concurrency for 256
        tokens per request: 5.00x``."""
        return (
            f"{device} KV cache size: {self.tokens:,} tokens, Maximum concurrency for "
            f"{self.max_model_len:,} tokens per request: {self.max_concurrency:.2f}x"
        )


def vllm_kv_capacity(kv_bytes: int, bytes_per_token: int, block_size: int, max_model_len: int) -> KVCapacity:
    """vLLM's KV-cache sizing for a full-attention model: whole blocks, then concurrency and tokens.

    num_blocks = floor(kv_bytes / (block_size x bytes_per_token)); a max_model_len request needs
    ceil(max_model_len / block_size) blocks; max concurrency = num_blocks / that; the reported token
    count is int(max concurrency x max_model_len). ``kv_bytes`` and ``bytes_per_token`` are per
    tensor-parallel rank (``--kv-cache-memory-bytes`` is per worker).
    """
    _positive(max_model_len=max_model_len)
    blocks = kv_cache_blocks(kv_bytes, bytes_per_token, block_size)
    return KVCapacity(blocks, block_size, max_model_len, bytes_per_token)


def format_bytes(n: float) -> str:
    """Human-readable bytes with binary units: 1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------
# Activations of one forward pass of the tinyformer model
# --------------------------------------------------------------------------------------------------


def forward_activation_bytes(
    batch: int, seq_len: int, n_embd: int, n_head: int, n_layer: int, vocab_size: int, dtype=4
) -> int:
    """Peak bytes of the tensors alive at once during one inference forward pass of ``tinyformer.Transformer``.

    Counted in numbers per token (times batch x seq_len x dtype bytes), from the tensors the code keeps:

    * attention stage: two n x n matrices at once (the scores and their masked copy / softmax,
      ``2 x n_head x T``) and 9 d-wide
      tensors (residual, LayerNorm output, q, k, v, contiguous copies of q and k, two views' owners);
    * MLP stage: the [T, 4d] hidden layer before and after GELU (8d) and 6 d-wide tensors;
    * LM head: the logits [T, V] and 3 d-wide tensors.

    Each layer's attention weights are freed once the layer is done (unless ``return_attention`` asks
    for them), so the peak is the largest stage. Measured with :func:`peak_bytes` it agrees within a
    few per cent (the test checks 5%); framework buffers and the weights themselves are not included.
    """
    _positive(batch=batch, seq_len=seq_len, n_embd=n_embd, n_head=n_head, n_layer=n_layer, vocab_size=vocab_size)
    attention = 2 * n_head * seq_len + 9 * n_embd
    mlp = 14 * n_embd
    lm_head = vocab_size + 3 * n_embd
    return math.ceil(batch * seq_len * max(attention, mlp, lm_head) * dtype_bytes(dtype))


# --------------------------------------------------------------------------------------------------
# Real models and GPUs (tables shipped in tinyformer/reference/)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The sizes that decide a decoder-only transformer's memory (names follow Hugging Face configs)."""

    name: str
    n_layer: int
    hidden_size: int
    n_head: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    mlp: str = "gated"  # "gelu": up + down; "gated": gate + up + down (SwiGLU)
    norm: str = "rmsnorm"  # "layernorm" has a bias, "rmsnorm" only a scale
    learned_positions: bool = False  # GPT-2's wpe table (rotary models have none)
    qkv_bias: bool = False
    linear_bias: bool = False  # GPT-2: every Linear has a bias
    kv_layers: int | None = None  # layers holding KV per token (default all)
    sliding_window: int | None = None
    extra_params: int = 0
    n_params_published: int | None = None
    hf_id: str = ""
    notes: str = ""
    vision: VisionSpec | None = None  # a vision-language model's encoder (tinyformer.vision_memory)

    @property
    def kv_layer_count(self) -> int:
        return self.n_layer if self.kv_layers is None else self.kv_layers

    @property
    def embedding_params(self) -> int:
        """Token table, position table (if learned) and an untied LM head: [V, d] matrices."""
        tables = self.vocab_size * self.hidden_size
        if self.learned_positions:
            tables += self.max_position_embeddings * self.hidden_size
        if not self.tie_word_embeddings:
            tables += self.vocab_size * self.hidden_size
        return tables

    @property
    def layer_params(self) -> int:
        """One transformer block: Q, K, V, O projections, the MLP, two norms (and biases)."""
        d, q, kv = self.hidden_size, self.n_head * self.head_dim, self.n_kv_heads * self.head_dim
        attention = d * q + 2 * d * kv + q * d
        if self.qkv_bias or self.linear_bias:
            attention += q + 2 * kv
        if self.linear_bias:
            attention += d
        n_mats = 3 if self.mlp == "gated" else 2
        mlp = n_mats * d * self.intermediate_size
        if self.linear_bias:
            mlp += (n_mats - 1) * self.intermediate_size + d
        return attention + mlp + 2 * self.norm_params

    @property
    def norm_params(self) -> int:
        return 2 * self.hidden_size if self.norm == "layernorm" else self.hidden_size

    @property
    def text_params(self) -> int:
        """The language model's parameters, the tied LM head counted once."""
        return self.embedding_params + self.n_layer * self.layer_params + self.norm_params + self.extra_params

    @property
    def n_params(self) -> int:
        """All parameters: the language model and, for a vision-language model, its vision encoder."""
        return self.text_params + (self.vision.n_params if self.vision else 0)

    def kv_bytes_per_token(self, dtype="bf16", tensor_parallel_size: int = 1) -> int:
        return kv_bytes_per_token(self.kv_layer_count, self.n_kv_heads, self.head_dim, dtype, tensor_parallel_size)

    @classmethod
    def from_tinyformer(cls, config, name: str = "tinyformer") -> ModelSpec:
        """The spec of a ``tinyformer.ModelConfig`` (GPT-2 architecture)."""
        return cls(
            name=name,
            n_layer=config.n_layer,
            hidden_size=config.n_embd,
            n_head=config.n_head,
            n_kv_heads=config.n_head,
            head_dim=config.head_dim,
            intermediate_size=4 * config.n_embd,
            vocab_size=config.vocab_size,
            max_position_embeddings=config.n_positions,
            tie_word_embeddings=True,
            mlp="gelu",
            norm="layernorm",
            learned_positions=True,
            qkv_bias=True,
            linear_bias=True,
            notes="the model this course builds and trains",
        )


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # total as nvidia-smi / torch.cuda.mem_get_info report it
    compute_capability: float
    host_link_gb_s: float = 32.0  # one-way PCIe bandwidth to the CPU (for CPU offload)
    notes: str = ""

    @property
    def supports_bf16(self) -> bool:
        return self.compute_capability >= 8.0

    @property
    def supports_fp8(self) -> bool:
        return self.compute_capability >= 8.0


def _reference(name: str) -> dict:
    return json.loads((resources.files("tinyformer") / "reference" / name).read_text())


@cache
def real_models() -> dict[str, ModelSpec]:
    """The shipped table of real model configurations, by name."""
    specs = {}
    for row in _reference("models.json")["models"]:
        row = dict(row)
        row["n_params_published"] = row.pop("n_params")
        specs[row["name"]] = ModelSpec(**row)
    return specs


@cache
def gpus() -> dict[str, GPU]:
    """The shipped table of NVIDIA GPUs, by name."""
    return {
        row["name"]: GPU(
            name=row["name"],
            memory_bytes=row["memory_mib"] * MiB,
            compute_capability=row["compute_capability"],
            host_link_gb_s=row["host_link_gb_s"],
            notes=row.get("notes", ""),
        )
        for row in _reference("gpus.json")["gpus"]
    }


@cache
def vision_models() -> dict[str, ModelSpec]:
    """The shipped vision-language models (reference/vlm_models.json), by Hugging Face id."""
    specs = {}
    for row in _reference("vlm_models.json")["models"]:
        vision = dict(row["vision"])
        vision["profile_image"] = tuple(vision["profile_image"])
        spec = ModelSpec(
            name=row["name"],
            hf_id=row["hf_id"],
            notes=row["notes"],
            n_params_published=row["n_params"],
            vision=VisionSpec(**vision),
            **row["text"],
        )
        specs[spec.hf_id] = spec
    return specs


def find_model(name: str) -> ModelSpec:
    """A shipped model by Hugging Face id (vision-language models first) or by its table name."""
    by_id = {spec.hf_id: spec for spec in real_models().values()} | vision_models()
    if name in by_id:
        return by_id[name]
    if name in real_models():
        return real_models()[name]
    raise ValueError(
        f"unknown model {name!r}; choose one of the Hugging Face ids {sorted(by_id)} or the names "
        f"{sorted(real_models())}."
    )


def lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}.")
    return table[name]


QUANTISED = ("fp8", "int8", "int4")


def model_weight_bytes(spec: ModelSpec, dtype="bf16") -> int:
    """Bytes of the model's weights in ``dtype``.

    Quantised checkpoints (fp8, int8, int4) quantise the transformer blocks' matrices; the embedding
    tables, LM head and norms stay in 16 bits, as AWQ/GPTQ/FP8 checkpoints ship them. (Their per-group
    scales, about 3% more for int4, are left out.)
    """
    name = dtype_name(dtype)
    if name not in QUANTISED:
        return weight_bytes(spec.n_params, name)
    kept_16bit = spec.embedding_params + (2 * spec.n_layer + 1) * spec.norm_params + spec.extra_params
    kept_16bit += spec.vision.n_params if spec.vision else 0  # vision encoders ship unquantised
    return weight_bytes(spec.n_params - kept_16bit, name) + weight_bytes(kept_16bit, "bf16")


# --------------------------------------------------------------------------------------------------
# A serving configuration: what vLLM will do with a model on a GPU (or on the CPU)
# --------------------------------------------------------------------------------------------------

# What vLLM measures at start-up and we can only estimate (documented assumptions, from public vLLM
# start-up logs: e.g. Llama-3-8B on an H100 logged 1.79 GiB "non_torch_memory" and 1.26 GiB
# "PyTorch activation peak memory"). CUDA context, cuBLAS/NCCL workspaces and CUDA graphs:
FRAMEWORK_OVERHEAD_BYTES = 2 * GiB
FRAMEWORK_OVERHEAD_TP_BYTES = 3 * GiB  # with tensor parallelism: NCCL buffers on every GPU
MAX_GPU_MEMORY_UTILIZATION = 0.95  # above this vLLM tends to run out of memory during CUDA graph capture


@dataclass(frozen=True)
class Engine:
    """How a vLLM generation measures the start-up peak it subtracts from the usable memory."""

    activation_factor: float  # measured activation peak / serving_activation_bytes
    overhead: int
    overhead_tp: int
    overhead_means: str


# vLLM <= 0.6 (the V0 engine) ran the profiling pass in eager PyTorch and read the peak from the GPU's free
# memory, so allocator slack and unfused temporaries (rotary-embedding copies, ...) count; CUDA graphs were
# captured only after the KV cache was sized ("CUDA graphs can take additional 1~3 GiB"). The factor is fitted
# to the Phi-3.5-vision log (case phi35v-a10g-30000 in reference/vlm_models.json); the other cases check it.
V0_ACTIVATION_FACTOR = 1.45
ENGINES = {
    "v1": Engine(1.0, FRAMEWORK_OVERHEAD_BYTES, FRAMEWORK_OVERHEAD_TP_BYTES, "CUDA context, workspaces, CUDA graphs"),
    "v0": Engine(V0_ACTIVATION_FACTOR, 0, GiB // 2, "non-torch allocations; CUDA graphs come after KV sizing"),
}
V0_MAX_NUM_SEQS = 256


def batch_limits(
    gpu: GPU, engine: str, max_model_len: int, max_num_batched_tokens: int | None, max_num_seqs: int | None
) -> tuple[int, int]:
    """The (tokens, sequences) of vLLM's profiling batch: as asked, else the engine's defaults.

    V1: :func:`default_batch_limits` (chunked prefill). V0 without chunked prefill: one whole prompt must
    fit a batch, so max(max_model_len, 2048) tokens, and 256 sequences.
    """
    if engine == "v0":
        tokens, seqs = max(max_model_len, 2048), V0_MAX_NUM_SEQS
    else:
        tokens, seqs = default_batch_limits(gpu)
    return max_num_batched_tokens or tokens, max_num_seqs or seqs


def default_batch_limits(gpu: GPU) -> tuple[int, int]:
    """vLLM's defaults for the OpenAI server: (max_num_batched_tokens, max_num_seqs), by GPU memory."""
    if gpu.memory_bytes >= 160 * GiB:
        return 16384, 1024
    if gpu.memory_bytes >= 70 * GiB and "A100" not in gpu.name:
        return 8192, 1024
    return 2048, 256


def serving_activation_bytes(
    spec: ModelSpec, max_num_batched_tokens: int, max_num_seqs: int, act_dtype="bf16", tensor_parallel_size: int = 1
) -> int:
    """Estimate of the activation peak vLLM's profiling forward pass reaches (per GPU).

    vLLM runs ``max_num_batched_tokens`` dummy tokens through the model and measures the peak. The largest
    transient tensors are the MLP's: [tokens, 2 x intermediate] (gate and up) and [tokens, intermediate],
    plus a few [tokens, hidden] residual tensors; then the sampler's fp32 logits [max_num_seqs, vocab].
    """
    inter = spec.intermediate_size // tensor_parallel_size
    per_token = (2 * inter if spec.mlp == "gated" else inter) + inter + 4 * spec.hidden_size
    mlp = max_num_batched_tokens * per_token * dtype_bytes(act_dtype)
    logits = max_num_seqs * spec.vocab_size * 4
    return math.ceil(mlp + logits)


@dataclass(frozen=True)
class ServingPlan:
    """What vLLM would do with one configuration (all byte counts per GPU / per worker)."""

    model: ModelSpec
    device: str  # "GPU" or "CPU", as vLLM's log line names it
    gpu: GPU | None
    dtype: str
    kv_dtype: str
    gpu_memory_utilization: float
    max_model_len: int
    tensor_parallel_size: int
    cpu_offload_gb: float
    block_size: int
    weights: int  # whole model
    weights_on_gpu: int  # per GPU, after tensor parallelism and CPU offload
    offloaded: int  # per GPU, kept in CPU memory and streamed in every forward pass
    activations: int
    overhead: int
    usable: int  # total x gpu_memory_utilization (or the KV bytes given on CPU)
    kv_budget: int
    bytes_per_token: int
    capacity: KVCapacity | None
    status: str  # "ok" or what stops vLLM
    message: str  # vLLM's line: the KV cache size, or the error it raises
    assumptions: tuple[str, ...] = field(default=())
    engine: str = "v1"  # how vLLM profiles (ENGINES)
    max_num_batched_tokens: int | None = None  # as asked (None: vLLM's default)
    max_num_seqs: int | None = None
    limit_mm_per_prompt: int = 1
    images_profiled: int = 0  # maximal dummy images in the profiling run

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def kv_per_request(self) -> int:
        """KV bytes one max_model_len request occupies (whole blocks)."""
        blocks = -(-self.max_model_len // self.block_size)
        return blocks * self.block_size * self.bytes_per_token

    @property
    def offload_seconds_per_step(self) -> float:
        """Time to stream the offloaded weights over PCIe once: added to every forward pass."""
        if not self.offloaded or self.gpu is None:
            return 0.0
        return self.offloaded / (self.gpu.host_link_gb_s * 1e9)

    def summary(self) -> str:
        rows = [
            f"{self.model.name} on {self.tensor_parallel_size} x {self.gpu.name if self.gpu else 'CPU'}, "
            f"{self.dtype} weights, KV in {self.kv_dtype}, max_model_len {self.max_model_len:,}",
            f"  weights            {format_bytes(self.weights_on_gpu):>10} per GPU"
            + (f" (+{format_bytes(self.offloaded)} offloaded to CPU)" if self.offloaded else ""),
            f"  activations (est.) {format_bytes(self.activations):>10}",
            f"  overhead (est.)    {format_bytes(self.overhead):>10}",
            f"  KV budget          {format_bytes(max(self.kv_budget, 0)):>10} ({self.bytes_per_token:,} B per token)",
            f"  -> {self.message}",
        ]
        return "\n".join(rows)


def plan_serving(
    model: ModelSpec | str,
    gpu: GPU | str | None = None,
    *,
    dtype="bf16",
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    cpu_offload_gb: float = 0.0,
    kv_cache_dtype="auto",
    kv_cache_memory_bytes: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    limit_mm_per_prompt: int = 1,
    engine: str = "v1",
) -> ServingPlan:
    """Predict what vLLM logs (or the error it raises) for ``model`` served on ``gpu``.

    GPU: usable = total memory x gpu_memory_utilization; KV budget = usable - weights per GPU (after
    tensor parallelism and ``cpu_offload_gb``) - activation peak (estimated) - framework overhead
    (estimated); tokens from whole blocks of 16. With ``gpu=None`` (vLLM's CPU backend) the KV budget is
    ``kv_cache_memory_bytes`` exactly, blocks hold 128 tokens, and the prediction is exact.
    ``kv_cache_memory_bytes`` on a GPU likewise replaces the estimate (vLLM then skips profiling).

    A vision-language model (a spec with ``vision``, e.g. ``"microsoft/Phi-3.5-vision-instruct"``) adds its
    vision encoder's weights and, to the profiling peak, the maximal dummy images vLLM runs through it
    (:func:`tinyformer.vision_memory.profile_images`). When weights plus that peak exceed the card, vLLM
    dies with an out-of-memory error during profiling (status ``profile_oom``). ``engine="v0"`` models how
    vLLM <= 0.6 profiled (the public logs of ``reference/vlm_models.json``): see :data:`ENGINES`.
    """
    spec = find_model(model) if isinstance(model, str) else model
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {sorted(ENGINES)}.")
    _positive(limit_mm_per_prompt=limit_mm_per_prompt)
    card = lookup(gpus(), gpu, "GPU") if isinstance(gpu, str) else gpu
    dtype = dtype_name(dtype)
    tp = tensor_parallel_size
    _positive(tensor_parallel_size=tp)
    max_model_len = spec.max_position_embeddings if max_model_len is None else max_model_len
    _positive(max_model_len=max_model_len)
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}.")
    if cpu_offload_gb < 0:
        raise ValueError(f"cpu_offload_gb must be >= 0, got {cpu_offload_gb}.")

    act_dtype = "fp32" if dtype == "fp32" else ("bf16" if card is None or card.supports_bf16 else "fp16")
    if dtype == "fp16":
        act_dtype = "fp16"
    kv_dtype = act_dtype if kv_cache_dtype == "auto" else dtype_name(kv_cache_dtype)
    weights = model_weight_bytes(spec, dtype)
    per_gpu = -(-weights // tp)
    offloaded = min(per_gpu, int(cpu_offload_gb * GiB))
    weights_on_gpu = per_gpu - offloaded
    bytes_per_token = spec.kv_bytes_per_token(kv_dtype, tp)
    assumptions: list[str] = []
    images = 0

    if card is None:
        if kv_cache_memory_bytes is None:
            raise ValueError("on the CPU backend pass kv_cache_memory_bytes (vLLM's --kv-cache-memory-bytes).")
        block_size, device = CPU_BLOCK_SIZE, "CPU"
        activations = overhead = 0
        usable = kv_budget = int(kv_cache_memory_bytes)
    else:
        block_size, device = GPU_BLOCK_SIZE, "GPU"
        usable = int(card.memory_bytes * gpu_memory_utilization)
        if kv_cache_memory_bytes is not None:
            activations = overhead = 0
            kv_budget = int(kv_cache_memory_bytes)
        else:
            tokens, seqs = batch_limits(card, engine, max_model_len, max_num_batched_tokens, max_num_seqs)
            activations = math.ceil(
                serving_activation_bytes(spec, tokens, seqs, act_dtype, tp) * ENGINES[engine].activation_factor
            )
            if spec.vision is not None:
                images = profile_images(spec.vision, tokens, seqs, limit_mm_per_prompt)
                per_image = vision_activation_bytes(
                    spec.vision, spec.hidden_size, spec.n_kv_heads * spec.head_dim, dtype_bytes(act_dtype)
                )
                activations += images * per_image
            overhead = ENGINES[engine].overhead_tp if tp > 1 else ENGINES[engine].overhead
            kv_budget = usable - weights_on_gpu - activations - overhead
            assumptions = [
                f"activation peak estimated for {tokens:,} batched tokens and {seqs:,} sequences"
                + (f" with {images:,} maximal dummy images" if spec.vision is not None else "")
                + " (vLLM measures it at start-up)",
                f"framework overhead ({ENGINES[engine].overhead_means}) assumed {format_bytes(overhead)}",
            ]

    common = dict(
        model=spec,
        device=device,
        gpu=card,
        dtype=dtype,
        kv_dtype=kv_dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        tensor_parallel_size=tp,
        cpu_offload_gb=cpu_offload_gb,
        block_size=block_size,
        weights=weights,
        weights_on_gpu=weights_on_gpu,
        offloaded=offloaded,
        activations=activations,
        overhead=overhead,
        usable=usable,
        kv_budget=kv_budget,
        bytes_per_token=bytes_per_token,
        assumptions=tuple(assumptions),
        engine=engine,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        limit_mm_per_prompt=limit_mm_per_prompt,
        images_profiled=images,
    )
    status, message = _vllm_check(
        spec, card, dtype, tp, max_model_len, weights_on_gpu, kv_budget, bytes_per_token, block_size
    )
    if status in ("no_kv_memory", "max_model_len_too_long", "ok"):
        status, message = _profile_check(card, weights_on_gpu, activations, overhead, images) or (status, message)
    if status != "ok":
        return ServingPlan(capacity=None, status=status, message=message, **common)
    capacity = vllm_kv_capacity(kv_budget, bytes_per_token, block_size, max_model_len)
    return ServingPlan(capacity=capacity, status="ok", message=capacity.log_line(device), **common)


def _vllm_check(spec, card, dtype, tp, max_model_len, weights_on_gpu, kv_budget, bytes_per_token, block_size):
    """(status, vLLM's message) for the first check vLLM would fail, in the order vLLM runs them."""
    if max_model_len > spec.max_position_embeddings:
        return "max_model_len_above_model", (
            f"ValueError: User-specified max_model_len ({max_model_len}) is greater than the derived "
            f"max_model_len (max_position_embeddings={spec.max_position_embeddings} in model's config.json)."
        )
    if spec.n_head % tp:
        return "bad_tensor_parallel_size", (
            f"ValueError: Total number of attention heads ({spec.n_head}) must be divisible by tensor "
            f"parallel size ({tp})."
        )
    if card is not None and dtype == "bf16" and not card.supports_bf16:
        return "dtype_unsupported", (
            f"ValueError: Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your "
            f"{card.name} GPU has compute capability {card.compute_capability}. You can use float16 instead "
            "by explicitly setting the `dtype` flag in CLI, for example: --dtype=half."
        )
    if card is not None and dtype == "fp8" and not card.supports_fp8:
        return "dtype_unsupported", (
            f"ValueError: fp8 weights need compute capability 8.0 or more; the {card.name} has "
            f"{card.compute_capability}. Use int8 or int4 (AWQ/GPTQ) instead."
        )
    if card is not None and weights_on_gpu > card.memory_bytes:
        return "weights_dont_fit", (
            f"torch.OutOfMemoryError: CUDA out of memory while loading the weights: "
            f"{format_bytes(weights_on_gpu)} of weights per GPU, the {card.name} has "
            f"{format_bytes(card.memory_bytes)} in total. (max_model_len does not change this.)"
        )
    if kv_budget <= 0:
        return "no_kv_memory", (
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
            f"when initializing the engine. (KV budget {format_bytes(kv_budget)}: the weights, activations and "
            "overhead already use all of the usable memory.)"
        )
    per_request = -(-max_model_len // block_size) * block_size * bytes_per_token
    if per_request > kv_budget:
        fits = kv_cache_blocks(kv_budget, bytes_per_token, block_size) * block_size
        estimate = f"Based on the available memory, the estimated maximum model length is {fits}. " if fits else ""
        return "max_model_len_too_long", (
            f"ValueError: To serve at least one request with the model's max seq len ({max_model_len}), "
            f"({per_request / GiB:.2f} GiB KV cache is needed, which is larger than the available KV cache "
            f"memory ({kv_budget / GiB:.2f} GiB). {estimate}Try increasing `gpu_memory_utilization` or "
            f"decreasing `max_model_len` when initializing the engine. [In bytes: {per_request:,} needed, "
            f"{kv_budget:,} available; {fits:,} tokens fit.]"
        )
    return "ok", ""


def _profile_check(card, weights_on_gpu, activations, overhead, images):
    """vLLM's profiling forward pass runs out of the card's memory (not just the utilisation share)."""
    peak = weights_on_gpu + activations + overhead
    if card is None or peak <= card.memory_bytes:
        return None
    dummies = f", {images:,} maximal dummy images included" if images else ""
    return "profile_oom", (
        "torch.OutOfMemoryError: CUDA out of memory during vLLM's start-up profiling run: weights "
        f"{format_bytes(weights_on_gpu)} + activation peak {format_bytes(activations)}{dummies} + overhead "
        f"{format_bytes(overhead)} = {format_bytes(peak)}, the {card.name} has {format_bytes(card.memory_bytes)}."
    )


@dataclass(frozen=True)
class Fix:
    change: str  # what to change, as a flag
    cost: str  # what it costs
    plan: ServingPlan  # the configuration after the change


def _plan_with(plan: ServingPlan, **changes) -> ServingPlan:
    return plan_serving(plan.model, plan.gpu, **(_plan_args(plan) | changes))


def _plan_args(plan: ServingPlan) -> dict:
    """The keyword arguments of plan_serving that made ``plan``."""
    return dict(
        dtype=plan.dtype,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        max_model_len=plan.max_model_len,
        tensor_parallel_size=plan.tensor_parallel_size,
        cpu_offload_gb=plan.cpu_offload_gb,
        kv_cache_dtype="auto" if plan.kv_dtype in ("bf16", "fp16", "fp32") else plan.kv_dtype,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        max_num_seqs=plan.max_num_seqs,
        limit_mm_per_prompt=plan.limit_mm_per_prompt,
        engine=plan.engine,
    )


def _largest_working(plan: ServingPlan, setting: str, below: int, floor: int = 1) -> ServingPlan | None:
    """The plan with the largest value of ``setting`` in [floor, below) that starts, or None.

    A smaller max_model_len or max_num_seqs never needs more memory, so a binary search finds it; and
    when even ``floor`` fails, the setting cannot help and is not suggested.
    """
    best, low, high = None, floor, below - 1
    while low <= high:
        mid = (low + high) // 2
        candidate = _plan_with(plan, **{setting: mid})
        if candidate.ok:
            best, low = candidate, mid + 1
        else:
            high = mid - 1
    return best


def fixes(plan: ServingPlan) -> list[Fix]:
    """Changes that make a failing GPU configuration start, cheapest first.

    Tried in order: a smaller max_model_len (free, when only the KV cache is short, or when the profiling
    batch is max_model_len tokens; it never helps when the weights don't fit), fewer sequences at once
    (a vision-language model's profiling run gives each a maximal image), a higher gpu_memory_utilization,
    an fp8 KV cache, quantised weights (fp8, int8, int4), more GPUs (tensor parallelism), a larger card, and
    CPU offload (slow). Each is kept only if the plan after it starts.
    """
    if plan.ok or plan.gpu is None:
        return []
    found: list[Fix] = []

    def attempt(change: str, cost: str, **changes) -> None:
        try:
            candidate = _plan_with(plan, **changes)
        except ValueError:
            return
        if candidate.ok:
            found.append(Fix(change, cost, candidate))

    if plan.status == "max_model_len_above_model":
        attempt(
            f"--max-model-len {plan.model.max_position_embeddings}",
            "none: the model's own limit",
            max_model_len=plan.model.max_position_embeddings,
        )
    if plan.status == "dtype_unsupported":
        attempt("--dtype float16", "none on this GPU (bf16 and fp16 have the same size)", dtype="fp16")
    if plan.status == "max_model_len_too_long":
        fits = kv_cache_blocks(plan.kv_budget, plan.bytes_per_token, plan.block_size) * plan.block_size
        if fits >= plan.block_size:
            attempt(
                f"--max-model-len {fits}", f"longer requests (over {fits:,} tokens) are refused", max_model_len=fits
            )
    if plan.status == "profile_oom" and plan.max_num_batched_tokens is None:
        shorter = _largest_working(plan, "max_model_len", plan.max_model_len, plan.block_size)
        if shorter is not None:
            n = shorter.max_model_len
            found.append(Fix(f"--max-model-len {n}", f"longer requests (over {n:,} tokens) are refused", shorter))
    if plan.status == "profile_oom" and plan.model.vision is not None:
        seqs = plan.max_num_seqs or batch_limits(plan.gpu, plan.engine, plan.max_model_len, None, None)[1]
        fewer = _largest_working(plan, "max_num_seqs", seqs)
        if fewer is not None:
            n = fewer.max_num_seqs
            found.append(Fix(f"--max-num-seqs {n}", f"at most {n} requests at once (profiling: {n} images)", fewer))
    if plan.gpu_memory_utilization < MAX_GPU_MEMORY_UTILIZATION:
        attempt(
            f"--gpu-memory-utilization {MAX_GPU_MEMORY_UTILIZATION}",
            "less headroom for other processes",
            gpu_memory_utilization=MAX_GPU_MEMORY_UTILIZATION,
        )
    if plan.status == "max_model_len_too_long" and plan.kv_dtype != "fp8" and plan.gpu.supports_fp8:
        attempt("--kv-cache-dtype fp8", "a little attention accuracy", kv_cache_dtype="fp8")
    for quantised in QUANTISED:
        if DTYPE_BYTES[quantised] < DTYPE_BYTES[plan.dtype]:
            attempt(f"quantised {quantised} weights", "some accuracy; needs a quantised checkpoint", dtype=quantised)
    for tp in (2, 4, 8):  # the smallest number of GPUs that works
        if tp > plan.tensor_parallel_size:
            before = len(found)
            attempt(
                f"--tensor-parallel-size {tp}",
                f"{tp} GPUs instead of {plan.tensor_parallel_size}",
                tensor_parallel_size=tp,
            )
            if len(found) > before:
                break
    for card in sorted(gpus().values(), key=lambda g: g.memory_bytes):  # the smallest larger card that works
        if card.memory_bytes > plan.gpu.memory_bytes:
            candidate = plan_serving(
                plan.model,
                card,
                **{k: v for k, v in _plan_args(plan).items() if k != "dtype" or card.supports_bf16 or v != "bf16"},
            )
            if candidate.ok:
                found.append(Fix(f"a larger card: {card.name}", "a bigger (dearer) GPU", candidate))
                break
    # CPU offload: the fewest whole GiB that leave room for the weights' rest and one full request.
    short = plan.weights_on_gpu + plan.activations + plan.overhead + plan.kv_per_request - plan.usable
    offload = math.ceil(plan.cpu_offload_gb) + max(1, math.ceil(short / GiB))
    candidate = _plan_with(plan, cpu_offload_gb=float(offload))
    if candidate.ok:
        seconds = candidate.offload_seconds_per_step
        found.append(
            Fix(
                f"--cpu-offload-gb {offload}",
                f"every forward pass streams {offload} GiB over PCIe (~{seconds:.2f} s per generated token)",
                candidate,
            )
        )
    return found


def cheapest_fix(plan: ServingPlan) -> Fix | None:
    """The first of :func:`fixes`, or None when the plan already works (or nothing in reach helps)."""
    found = fixes(plan)
    return found[0] if found else None


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    peak_bytes: int  # most bytes allocated at once during the call, above what was allocated before it
    retained_bytes: int  # still allocated when the call returned (its result, caches it filled)
    seconds: float
    device: str


def _cpu_memory_events(prof) -> list[tuple[int, int]]:
    """(time, +bytes allocated / -bytes freed) for every tensor allocation the profiler saw, in order."""
    events = prof.profiler.kineto_results.events()
    return sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")


def peak_bytes(fn: Callable, *args, device: str | torch.device | None = None, **kwargs) -> tuple[Measurement, object]:
    """Run ``fn(*args, **kwargs)`` once and measure its memory: (Measurement, fn's result).

    CPU: ``torch.profiler`` with ``profile_memory=True`` records every tensor allocation and free; the
    running sum's maximum is the peak. CUDA: ``torch.cuda.max_memory_allocated`` after resetting the
    peak counter. Both count tensor bytes (what the formulas predict), not the process's RSS.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) - before
        retained = torch.cuda.memory_allocated(device) - before
        return Measurement(peak, retained, seconds, str(device)), result
    if device.type != "cpu":
        raise ValueError(f"peak_bytes measures on 'cpu' or 'cuda', got {device}.")
    from torch.profiler import ProfilerActivity, profile

    # Kineto prints "profiler_start/stop" lines on stderr (into the notebook) unless told to be quiet.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
    current = peak = 0
    for _, nbytes in _cpu_memory_events(prof):
        current += nbytes
        peak = max(peak, current)
    return Measurement(peak, current, seconds, "cpu"), result


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v, written out so the n x n score matrix exists once, whole.

    q, k, v: [B, nh, n, hd]. Scaling q (not the scores) and a softmax done in place keep exactly one
    [B, nh, n, n] matrix alive, so the measured peak is the formula's score bytes plus the output.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q * scale) @ k.transpose(-2, -1)  # [B, nh, n, n]: the O(n^2) matrix
    if causal:
        n = q.shape[-2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1)  # [n, n], True above the diagonal
        scores.masked_fill_(future, float("-inf"))
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()  # in place: no second n x n matrix
    scores.div_(scores.sum(dim=-1, keepdim=True))  # each row now sums to 1
    return scores @ v  # [B, nh, n, hd]


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """PyTorch's fused kernel: the same result, computed block by block without the n x n matrix."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


ATTENTION_IMPLEMENTATIONS = {"naive": naive_attention, "fused": fused_attention}


def attention_inputs(
    batch: int, n_head: int, seq_len: int, head_dim: int, dtype="fp32", device="cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random q, k, v [B, nh, n, hd]."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch, n_head, seq_len, head_dim)
    tensors = (torch.randn(shape, generator=generator) for _ in range(3))
    return tuple(t.to(device=device, dtype=TORCH_DTYPES[dtype_name(dtype)]) for t in tensors)


def measure_attention(
    impl: str,
    seq_len: int,
    n_head: int = 4,
    batch: int = 1,
    head_dim: int = 32,
    dtype="fp32",
    device=None,
    causal: bool = False,
) -> Measurement:
    """Peak bytes and time of one attention call (inputs allocated beforehand, so not counted)."""
    fn = lookup(ATTENTION_IMPLEMENTATIONS, impl, "attention implementation")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    q, k, v = attention_inputs(batch, n_head, seq_len, head_dim, dtype, device)
    with torch.inference_mode():
        measurement, _ = peak_bytes(fn, q, k, v, causal=causal, device=device)
    return measurement


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct memory blocks behind ``tensors`` (a view shares its base's block), i.e.
    what they actually keep allocated, not just their own elements."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def kv_cache_formula_bytes(cache, config) -> int:
    """The formula's bytes for a tinyformer KVCache: 2 x n_layer x n_head x head_dim x dtype x B x S."""
    keys = [k for k in cache.keys if k is not None]
    if not keys:
        return 0
    batch, dtype = keys[0].shape[0], keys[0].dtype
    return kv_cache_bytes(len(cache), config.n_layer, config.n_head, config.head_dim, dtype, batch=batch)
