"""Measurements on the learner's device that check the byte formulas.

* :func:`peak_bytes` runs a function and returns the most bytes that were allocated at once: on CPU from
  ``torch.profiler``'s memory events (every tensor allocation and free, in order), on CUDA from
  ``torch.cuda.max_memory_allocated``. Both count tensor bytes, not the process's noisy RSS.
* :func:`naive_attention` materialises the n x n score matrix; ``F.scaled_dot_product_attention`` (fused)
  does not, and :func:`measure_attention` shows the difference.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tinyformer.memory.catalogue import lookup
from tinyformer.memory.formulas import dtype_name, kv_cache_bytes

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    """The formula's bytes for a tinyformer KVCache: 2 x n_layer x n_kv_head x head_dim x dtype x B x S."""
    keys = [k for k in cache.keys if k is not None]
    if not keys:
        return 0
    batch, dtype = keys[0].shape[0], keys[0].dtype
    return kv_cache_bytes(len(cache), config.n_layer, config.n_kv_head, config.head_dim, dtype, batch=batch)
