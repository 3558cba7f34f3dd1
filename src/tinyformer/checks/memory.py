"""Lesson 06 exercises: bytes of the KV cache per token, of the attention scores, of the weights.

Expected answers: the formulas of ``tinyformer.memory``.
"""

from __future__ import annotations

from tinyformer import memory
from tinyformer.checks.core import Case, compare_numbers, off_by, run_check

# (n_layer, n_heads, head_dim, bytes per value): GPT-2 medium first (no two factors alike, so each hint is
# unambiguous), tinyformer's nano and micro, then grouped-query models with few KV heads.
KV_SHAPES = ((24, 16, 64, 2), (2, 2, 32, 4), (2, 4, 32, 4), (32, 8, 128, 2), (80, 8, 128, 1))


def check_kv_bytes_per_token(fn, *, quiet: bool = False):
    """``fn(n_layer, n_heads, head_dim, bytes_per_value)`` -> KV-cache bytes one token adds (all layers)."""

    def make_cases():
        return [
            Case(
                f"n_layer={layers}, heads={heads}, head_dim={head_dim}, {nbytes} bytes per value",
                (layers, heads, head_dim, nbytes),
                memory.kv_bytes_per_token(layers, heads, head_dim, nbytes),
            )
            for layers, heads, head_dim, nbytes in KV_SHAPES
        ]

    return run_check(
        "check_kv_bytes_per_token",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(
            off_by(lambda case: 0.5, "half the answer: the cache stores a key AND a value per token, a factor of 2."),
            off_by(lambda case: 1 / case.args[0], "one layer's worth: every layer keeps its own keys and values."),
            off_by(lambda case: 1 / case.args[1], "one head's worth: count every (KV) head."),
            off_by(lambda case: 8, "that looks like bits: count bytes per value (fp32 = 4, bf16 = 2, fp8 = 1)."),
        ),
        hint="per token the cache holds one key and one value vector of head_dim numbers, per head, per layer.",
        quiet=quiet,
    )


# (sequence length, heads, batch, bytes per value)
SCORE_SHAPES = ((8, 2, 1, 4), (100, 4, 1, 4), (1024, 12, 2, 2), (4096, 32, 1, 2))


def check_attention_scores_bytes(fn, *, quiet: bool = False):
    """``fn(seq_len, n_head, batch, bytes_per_value)`` -> bytes of one layer's full score matrix (naive attention)."""

    def make_cases():
        return [
            Case(
                f"n={n}, heads={heads}, batch={batch}, {nbytes} bytes per value",
                (n, heads, batch, nbytes),
                memory.attention_scores_bytes(n, heads, batch, nbytes),
            )
            for n, heads, batch, nbytes in SCORE_SHAPES
        ]

    return run_check(
        "check_attention_scores_bytes",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(
            off_by(lambda case: 1 / case.args[0], "that grows linearly with n; each head's matrix is n x n."),
            off_by(lambda case: 1 / case.args[1], "one head's worth: every head has its own n x n matrix."),
            off_by(lambda case: 1 / case.args[2], "one sequence's worth: every sequence has its own matrices."),
        ),
        hint="batch x heads x n x n numbers, times the bytes per number.",
        quiet=quiet,
    )


WEIGHT_CASES = ((124_000_000, "fp32"), (8_000_000_000, "bf16"), (70_000_000_000, "fp8"), (7_000_000_000, "int4"))


def check_weight_bytes(fn, *, quiet: bool = False):
    """``fn(n_params, dtype)``: dtype one of "fp32", "bf16", "fp16", "fp8", "int8", "int4" -> bytes of the weights."""

    def make_cases():
        return [
            Case(f"{n:,} parameters in {dtype}", (n, dtype), memory.weight_bytes(n, dtype)) for n, dtype in WEIGHT_CASES
        ]

    return run_check(
        "check_weight_bytes",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(
            off_by(
                lambda case: 2 if case.args[1] == "int4" else 1, "int4 packs two numbers in a byte: 0.5 bytes each."
            ),
            off_by(
                lambda case: 8, "that looks like bits; divide by 8 (fp32 = 4 bytes, bf16 = 2, fp8 = 1, int4 = 0.5)."
            ),
        ),
        hint="parameters x bytes per parameter: fp32 4, bf16/fp16 2, fp8/int8 1, int4 0.5.",
        quiet=quiet,
    )
