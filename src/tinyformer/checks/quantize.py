"""Lesson 11 exercises: int8 quantise/dequantise, int4 packing in AWQ's order, KV bytes with an fp8 cache.

Expected answers: ``tinyformer.quantize`` and the KV byte formula of ``tinyformer.memory``.
"""

from __future__ import annotations

import torch

from tinyformer import memory, quantize
from tinyformer.checks.core import Case, as_tensor, compare_numbers, compare_tensors, off_by, run_check, tensors_match

# [out, in] weight shapes: nano's c_attn and c_fc, a row, and one with a zero row.
INT8_SHAPES = ((192, 64), (256, 64), (1, 8), (4, 16))


def _weights(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.2
    if shape == (4, 16):
        w[2] = 0.0  # an all-zero row: its scale must not be 0 (dividing by it gives NaN)
    return w


def check_int8_round_trip(fn, *, quiet: bool = False):
    """``fn(w)``: a float weight [out, in] -> the dequantised weight [out, in] after symmetric int8 per output
    channel: scale = max|row| / 127, q = round(w / scale) in -127..127, back to q * scale. Scales kept in
    float32 or rounded to fp16 (as checkpoints store them) are both right."""

    def make_cases():
        cases = []
        for seed, shape in enumerate(INT8_SHAPES):
            w = _weights(seed, shape)
            q, scale = quantize.quantise_int8(w, scale_dtype=torch.float32)
            q16, scale16 = quantize.quantise_int8(w)
            answers = (quantize.dequantise_int8(q, scale), quantize.dequantise_int8(q16, scale16))
            cases.append(Case(f"w {list(shape)}", (w,), answers))
        return cases

    def per_tensor(got, case):
        (w,) = case.args
        scale = w.abs().max() / quantize.INT8_MAX
        if tensors_match(got, torch.round(w / scale).clamp(-127, 127) * scale, atol=1e-6):
            return "one scale for the whole matrix: give each output channel (row) its own, amax over dim=1."
        return None

    def column_scales(got, case):
        (w,) = case.args
        scale = w.abs().amax(dim=0, keepdim=True) / quantize.INT8_MAX
        if tensors_match(got, torch.round(w / scale).clamp(-127, 127) * scale, atol=1e-6):
            return "scales per column (input): a channel is a row of [out, in], so reduce over dim=1."
        return None

    def not_rounded(got, case):
        (w,) = case.args
        if tensors_match(got, w, atol=1e-7):
            return "you gave the weight back unchanged: round(w / scale) to whole numbers before multiplying back."
        return None

    def nan(got, case):
        if torch.isnan(as_tensor(got)).any():
            return "NaN: an all-zero row has max|w| = 0, so its scale is 0; use a scale of 1 for such rows."
        return None

    def compare(got, expected):  # expected: (float32 scales, fp16 scales); either is right
        with_fp32_scales, with_fp16_scales = expected
        problem = compare_tensors(atol=1e-6, rtol=0)(got, with_fp32_scales)
        return None if problem and tensors_match(got, with_fp16_scales, atol=1e-6, rtol=0) else problem

    return run_check(
        "check_int8_round_trip",
        fn,
        make_cases,
        compare,
        diagnoses=(nan, not_rounded, per_tensor, column_scales),
        hint="scale = w.abs().amax(dim=1, keepdim=True) / 127; q = round(w / scale).clamp(-127, 127); "
        "return q * scale.",
        quiet=quiet,
    )


PACK_SHAPES = ((1, 8), (3, 16), (2, 64))


def check_int4_pack(fn, *, quiet: bool = False):
    """``fn(q)``: 4-bit numbers [rows, cols] (ints 0..15, cols a multiple of 8) -> int32 [rows, cols / 8], each
    group of eight in AWQ's order: number ORDER[i] at bits 4i..4i+3 with ORDER = (0, 2, 4, 6, 1, 3, 5, 7)."""

    def make_cases():
        cases = []
        for seed, shape in enumerate(PACK_SHAPES):
            q = torch.randint(0, 16, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
            if seed == 0:
                q = torch.arange(8)[None] + 8  # 8..15: the top nibble sets the int32's sign bit
            cases.append(Case(f"q {list(shape)}", (q,), quantize.pack_int4(q)))
        return cases

    def plain_order(got, case):
        if tensors_match(got, quantize.pack_int4(case.args[0], order=tuple(range(8))), atol=0):
            return "plain order (number i at bits 4i); AWQ puts number ORDER[i] at bits 4i: q[..., ORDER] first."
        return None

    def reversed_mapping(got, case):
        inverse = (0, 4, 1, 5, 2, 6, 3, 7)  # number i at bits 4 * ORDER[i]: the mapping read the other way round
        if tensors_match(got, quantize.pack_int4(case.args[0], order=inverse), atol=0):
            return "the mapping is the wrong way round: bits 4i hold number ORDER[i], not number i at bits 4*ORDER[i]."
        return None

    def as_int64(got, case):
        t = as_tensor(got)
        if t.dtype == torch.int64 and tensors_match(torch.where(t >= 2**31, t - 2**32, t), case.expected, atol=0):
            return "right bits, but kept as int64 above 2**31: subtract 2**32 there and return int32 (the same bits)."
        return None

    return run_check(
        "check_int4_pack",
        fn,
        make_cases,
        _compare_exact_int32,
        diagnoses=(as_int64, plain_order, reversed_mapping),
        hint="reshape to [rows, cols/8, 8], reorder the last axis with ORDER, shift number i left by 4i, sum; "
        "then turn the unsigned 32-bit values into int32.",
        quiet=quiet,
    )


def _compare_exact_int32(got, expected) -> str | None:
    t = as_tensor(got)
    if t.dtype != torch.int32:
        return f"expected an int32 tensor, got {t.dtype}."
    return compare_tensors(atol=0, rtol=0)(t, expected)


# (n_layer, n_heads, head_dim, KV dtype): nano in fp32 and fp8, a 7B-size model in bf16 and fp8.
KV_FP8_CASES = ((2, 2, 32, "fp32"), (2, 2, 32, "fp8"), (32, 32, 128, "bf16"), (32, 8, 128, "fp8"))


def check_kv_bytes_fp8(fn, *, quiet: bool = False):
    """``fn(n_layer, n_heads, head_dim, kv_dtype)`` with kv_dtype "fp32", "bf16" or "fp8" -> KV bytes per token."""

    def make_cases():
        return [
            Case(
                f"n_layer={layers}, heads={heads}, head_dim={head_dim}, {dtype}",
                (layers, heads, head_dim, dtype),
                memory.kv_bytes_per_token(layers, heads, head_dim, dtype),
            )
            for layers, heads, head_dim, dtype in KV_FP8_CASES
        ]

    return run_check(
        "check_kv_bytes_fp8",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(
            off_by(lambda case: 0.5, "half the answer: each token stores a key AND a value, a factor of 2."),
            off_by(lambda case: 8, "that looks like bits: fp8 is 1 byte per value, bf16 2, fp32 4."),
        ),
        hint="2 (key and value) x n_layer x n_heads x head_dim x bytes per value (fp32 4, bf16 2, fp8 1).",
        quiet=quiet,
    )
