"""Byte formulas: how many bytes a transformer's numbers take, as pure functions of its sizes.

* weights: parameters x bytes per parameter of the dtype (fp32 4, bf16/fp16 2, fp8/int8 1, int4 0.5);
* the attention score matrix of a naive implementation: ``batch x heads x n x n x dtype bytes`` per layer;
* the KV cache: ``2 (K and V) x n_layer x n_kv_heads x head_dim x dtype bytes`` per token;
* one forward pass of the tinyformer model (activations).

One formula each, used everywhere: vLLM's rules (:mod:`tinyformer.vllm_rules`), the GPU planner
(:mod:`tinyformer.memory.planner`), the serving lessons and the exercise checkers call these.
No torch here: a dtype may be a name ("fp32", "bfloat16") or a ``torch.dtype``, read by its name.
"""

from __future__ import annotations

import math

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


def dtype_name(dtype) -> str:
    """The short name ("fp32", "bf16", ...) of a dtype given as a name or a ``torch.dtype``."""
    text = str(dtype).lower().removeprefix("torch.")  # str(torch.float32) == "torch.float32"
    name = _DTYPE_ALIASES.get(text, text)
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


def positive(**values) -> None:
    """Raise a ValueError naming the argument unless each value is a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def attention_scores_bytes(seq_len: int, n_head: int, batch: int = 1, dtype=4, query_len: int | None = None) -> int:
    """Bytes of one layer's attention score matrix in a naive implementation.

    ``batch x n_head x query_len x seq_len x dtype bytes`` (query_len defaults to seq_len: a prefill of n
    tokens makes an n x n matrix per head). Doubling n quadruples it. Fused kernels (FlashAttention,
    ``F.scaled_dot_product_attention``) compute it block by block and never hold it all.
    """
    query_len = seq_len if query_len is None else query_len
    positive(seq_len=seq_len, n_head=n_head, batch=batch, query_len=query_len)
    return math.ceil(batch * n_head * query_len * seq_len * dtype_bytes(dtype))


def kv_bytes_per_token(n_layer: int, n_kv_heads: int, head_dim: int, dtype=4, tensor_parallel_size: int = 1) -> int:
    """KV-cache bytes one token adds (on one tensor-parallel rank).

    ``2 (K and V) x n_layer x n_kv_heads x head_dim x dtype bytes``. With tensor parallelism each rank
    holds ``max(1, n_kv_heads // tensor_parallel_size)`` heads (vLLM replicates a head when there are
    fewer KV heads than ranks). For GPT-2 style models n_kv_heads x head_dim = n_embd.
    """
    positive(n_layer=n_layer, n_kv_heads=n_kv_heads, head_dim=head_dim, tensor_parallel_size=tensor_parallel_size)
    heads_per_rank = max(1, n_kv_heads // tensor_parallel_size)
    return math.ceil(2 * n_layer * heads_per_rank * head_dim * dtype_bytes(dtype))


def mla_kv_bytes_per_token(n_layer: int, kv_lora_rank: int, rope_head_dim: int, dtype=2) -> int:
    """KV-cache bytes one token adds with multi-head latent attention (DeepSeek-V2/V3), on every rank.

    MLA caches one compressed latent (``kv_lora_rank``) and one shared rotary key (``rope_head_dim``) per
    layer instead of K and V per head: ``n_layer x (kv_lora_rank + rope_head_dim) x dtype bytes``. The
    latent is not split across tensor-parallel ranks: each rank holds it whole.
    """
    positive(n_layer=n_layer, kv_lora_rank=kv_lora_rank, rope_head_dim=rope_head_dim)
    return math.ceil(n_layer * (kv_lora_rank + rope_head_dim) * dtype_bytes(dtype))


def kv_cache_bytes(n_tokens: int, n_layer: int, n_kv_heads: int, head_dim: int, dtype=4, batch: int = 1) -> int:
    """KV-cache bytes of ``batch`` sequences of ``n_tokens`` each: grows linearly with tokens."""
    if not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be a non-negative integer, got {n_tokens!r}.")
    positive(batch=batch)
    return batch * n_tokens * kv_bytes_per_token(n_layer, n_kv_heads, head_dim, dtype)


def weight_bytes(n_params: int, dtype=4) -> int:
    """Bytes of ``n_params`` weights stored in ``dtype``: n_params x (4, 2, 1 or 0.5)."""
    if not isinstance(n_params, int) or n_params < 0:
        raise ValueError(f"n_params must be a non-negative integer, got {n_params!r}.")
    return math.ceil(n_params * dtype_bytes(dtype))


def format_bytes(n: float) -> str:
    """Human-readable bytes with binary units: 1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


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
    positive(batch=batch, seq_len=seq_len, n_embd=n_embd, n_head=n_head, n_layer=n_layer, vocab_size=vocab_size)
    attention = 2 * n_head * seq_len + 9 * n_embd
    mlp = 14 * n_embd
    lm_head = vocab_size + 3 * n_embd
    return math.ceil(batch * seq_len * max(attention, mlp, lm_head) * dtype_bytes(dtype))
