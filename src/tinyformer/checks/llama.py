"""Lesson 14 exercises: the rotary rotation, grouped-query attention's head mapping, KV bytes with n_kv_head.

Expected answers: :func:`tinyformer.positions.apply_rotary` (what the llama model applies to q and k),
:func:`tinyformer.model.share_kv_heads` (which K/V head each query head reads) and
:func:`tinyformer.memory.kv_bytes_per_token` (the one KV formula).
"""

from __future__ import annotations

import torch

from tinyformer import memory
from tinyformer.checks.core import Case, compare_numbers, compare_tensors, off_by, run_check, seeded, tensors_match
from tinyformer.config import ModelConfig
from tinyformer.model import share_kv_heads
from tinyformer.positions import apply_rotary

# ----- the rotation ------------------------------------------------------------------------------

ROTARY_SHAPES = ((1, 4, 8), (2, 6, 16), (3, 5, 32))  # (heads, T, head_dim)


def check_rotary(fn, *, quiet: bool = False):
    """``fn(x, positions)``: x [heads, T, hd], positions [T] -> x with each pair (x[..., 2i], x[..., 2i+1]) rotated
    by the angle position x base^(-2i/hd), base 10000."""

    def make_cases():
        cases = []
        for seed, (heads, T, hd) in enumerate(ROTARY_SHAPES):
            x = torch.randn(heads, T, hd, generator=seeded(seed))
            positions = torch.arange(T) + 3 * seed  # not always from 0: the angle is the position's, not the row's
            cases.append(
                Case(f"x {[heads, T, hd]}, positions {positions.tolist()}", (x, positions), apply_rotary(x, positions))
            )
        return cases

    def backwards(got, case):
        x, positions = case.args
        if tensors_match(got, apply_rotary(x, -positions)):
            return "you rotated the wrong way: x_even cos - x_odd sin goes first, x_even sin + x_odd cos second."
        return None

    def halves(got, case):
        x, positions = case.args
        hd = x.shape[-1]
        # pair (i, i + hd/2) of x is pair (2i, 2i+1) of x[..., interleave]: dims 0, hd/2, 1, hd/2 + 1, ...
        interleave = torch.arange(hd).view(2, hd // 2).T.flatten()
        if hd > 2 and tensors_match(got[..., interleave], apply_rotary(x[..., interleave], positions)):
            return "you paired dimension i with i + hd/2 (Hugging Face's rotate-half); lesson 01 pairs 2i with 2i+1."
        return None

    def row_positions(got, case):
        x, positions = case.args
        if positions[0] != 0 and tensors_match(got, apply_rotary(x, torch.arange(x.shape[-2]))):
            return "you rotated row t by t: use the positions you were given (a decode step starts at the cache's end)."
        return None

    return run_check(
        "check_rotary",
        fn,
        make_cases,
        compare_tensors(),
        diagnoses=(backwards, halves, row_positions),
        hint="angle[t, i] = positions[t] x 10000 ** (-2i / hd); even' = even cos - odd sin, odd' = even sin + odd cos.",
        quiet=quiet,
    )


# ----- which K/V head a query head reads ---------------------------------------------------------

HEAD_CASES = ((0, 4, 2), (1, 4, 2), (3, 4, 2), (5, 8, 2), (7, 32, 8), (31, 32, 8), (6, 8, 1), (5, 8, 8))


def kv_head_of(query_head: int, n_head: int, n_kv_head: int) -> int:
    """The K/V head that ``query_head`` reads, as share_kv_heads lays them out."""
    heads = share_kv_heads(torch.arange(n_kv_head).view(1, n_kv_head, 1, 1), n_head)  # [1, nh, 1, 1]
    return int(heads[0, query_head, 0, 0])


def check_kv_head_of(fn, *, quiet: bool = False):
    """``fn(query_head, n_head, n_kv_head)`` -> the key/value head that query head reads (grouped-query attention:
    consecutive query heads form a group of n_head / n_kv_head sharing one K/V head)."""

    def make_cases():
        return [
            Case(f"query head {h} of {nh}, {nkv} K/V heads", (h, nh, nkv), kv_head_of(h, nh, nkv))
            for h, nh, nkv in HEAD_CASES
        ]

    def modulo(got, case):
        h, nh, nkv = case.args
        if got == h % nkv != case.expected:
            return "that deals the query heads out in turn (h % n_kv_head); groups are consecutive heads: h // group."
        return None

    def group_size(got, case):
        h, nh, nkv = case.args
        if got == h // nkv != case.expected:
            return "you divided by n_kv_head; divide by the group size n_head // n_kv_head."
        return None

    return run_check(
        "check_kv_head_of",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(modulo, group_size),
        hint="a group holds n_head // n_kv_head consecutive query heads: query head h is in group h // that.",
        quiet=quiet,
    )


# ----- KV bytes with shared heads ----------------------------------------------------------------

GQA_CONFIGS = (  # (n_layer, n_embd, n_head, n_kv_head, bytes per value): micro MHA/GQA/MQA, then larger
    (2, 128, 4, 4, 4),
    (2, 128, 4, 2, 4),
    (2, 128, 4, 1, 4),
    (32, 4096, 32, 8, 2),
    (28, 3584, 28, 4, 2),
)


def check_kv_bytes_gqa(fn, *, quiet: bool = False):
    """``fn(config, bytes_per_value)``: a llama ModelConfig -> KV-cache bytes one token adds (all layers)."""

    def make_cases():
        cases = []
        for layers, d, nh, nkv, nbytes in GQA_CONFIGS:
            config = ModelConfig(
                vocab_size=64, n_positions=16, n_embd=d, n_layer=layers, n_head=nh, arch="llama", n_kv_head=nkv
            )
            expected = memory.kv_bytes_per_token(layers, nkv, config.head_dim, nbytes)
            cases.append(
                Case(f"n_layer={layers}, d={d}, {nh} heads, {nkv} K/V heads, {nbytes} B", (config, nbytes), expected)
            )
        return cases

    return run_check(
        "check_kv_bytes_gqa",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(
            off_by(
                lambda case: case.args[0].group_size, "you counted every query head; only n_kv_head heads are cached."
            ),
            off_by(lambda case: 0.5, "half the answer: the cache stores a key AND a value per token, a factor of 2."),
            off_by(
                lambda case: 1 / case.args[0].n_layer, "one layer's worth: every layer keeps its own keys and values."
            ),
        ),
        hint="2 (K and V) x n_layer x n_kv_head x head_dim x bytes per value.",
        quiet=quiet,
    )
