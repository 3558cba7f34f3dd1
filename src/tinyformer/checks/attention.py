"""Lesson 02 exercises: the causal mask, the scaled scores, the mix of values, causal attention whole.

The expected answers come from the package: the model's own causal buffer and
``tinyformer.memory.naive_attention`` (softmax(q kᵀ / √hd) v, written out). Given the identity matrix as
values, attention returns its own weights, which is how the checks read the package's weights.
"""

from __future__ import annotations

import math

import torch

from tinyformer.checks.core import Case, as_tensor, compare_tensors, describe, run_check, tensors_match
from tinyformer.checks.models import tiny_model
from tinyformer.memory import attention_inputs, naive_attention

# (batch, heads, tokens, head_dim): tokens != head_dim, so a missing transpose shows as a wrong shape.
QKV_SHAPES = ((1, 1, 4, 8), (2, 3, 5, 16), (1, 2, 7, 4), (2, 1, 1, 8))


def _qkv_cases(seed_offset: int = 0):
    for seed, (batch, heads, length, head_dim) in enumerate(QKV_SHAPES, start=seed_offset):
        q, k, v = attention_inputs(batch, heads, length, head_dim, seed=seed)
        yield f"B={batch}, heads={heads}, T={length}, head_dim={head_dim}", q, k, v


def attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """The package's attention weights [B, nh, T, T]: naive attention applied to identity values."""
    length = q.shape[-2]
    identity = torch.eye(length).expand(*q.shape[:-1], length)  # [B, nh, T, T]
    return naive_attention(q, k, identity, causal=causal)


# --------------------------------------------------------------------------------------------------
# The causal mask
# --------------------------------------------------------------------------------------------------

MASK_LENGTHS = (5, 2, 9, 1)  # T=1 last: a one-token mask can't tell most mistakes apart


def check_causal_mask(fn, *, quiet: bool = False):
    """``fn(T)`` -> a bool tensor [T, T], True where token i may look at token j (j <= i)."""

    def make_cases():
        causal = tiny_model(seed=0, n_positions=max(MASK_LENGTHS)).causal  # the model's own mask buffer
        return [Case(f"T={t}", (t,), causal[:t, :t].clone()) for t in MASK_LENGTHS]

    def no_diagonal(got, case):
        expected = case.expected
        if tensors_match(got, expected & ~torch.eye(len(expected), dtype=torch.bool)):
            return "off by one: a token may look at itself, so the diagonal must be True."
        return None

    def upper(got, case):
        if tensors_match(got, case.expected.T):
            return "that is the upper triangle: row i is the token that looks, and it may see columns j <= i."
        return None

    def inverted(got, case):
        if tensors_match(got, ~case.expected):
            return (
                "inverted: you marked the future (what must be hidden). Here True means 'may look', "
                "i.e. the diagonal and below."
            )
        return None

    return run_check(
        "check_causal_mask",
        fn,
        make_cases,
        compare_tensors(),
        diagnoses=(no_diagonal, upper, inverted),
        hint="entry (i, j) is True when j <= i: the lower triangle of a T x T matrix, diagonal included.",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# Scaled scores
# --------------------------------------------------------------------------------------------------


def _compare_scores(got, expected_weights: torch.Tensor) -> str | None:
    """Scores are compared through softmax: what attention does with them (adding a constant to a row
    changes nothing), against the package's weights."""
    got = as_tensor(got)
    if got.shape != expected_weights.shape:
        return f"wrong shape: expected [B, heads, T, T] = {list(expected_weights.shape)}, got {list(got.shape)}."
    if not got.is_floating_point():
        return f"expected floating-point scores, got {describe(got)}."
    weights = torch.softmax(got.float(), dim=-1)
    close = torch.isclose(weights, expected_weights, atol=1e-5, rtol=1e-4)
    if close.all():
        return None
    row = tuple(int(i) for i in (~close).nonzero()[0][:-1])
    return (
        f"after softmax your scores give other attention weights. Row {row} (batch, head, query):\n"
        f"   expected weights: {describe(expected_weights[row])}\n   got weights:      {describe(weights[row])}"
    )


def check_attention_scores(fn, *, quiet: bool = False):
    """``fn(q, k)``: q, k [B, heads, T, head_dim] -> scores [B, heads, T, T], q·k scaled by 1/√head_dim."""

    def make_cases():
        return [Case(label, (q, k), attention_weights(q, k, causal=False)) for label, q, k, _ in _qkv_cases()]

    def softmax_matches(got, case, factor=1.0, transpose=False):
        got = as_tensor(got).float()
        got = got.transpose(-2, -1) if transpose else got
        return torch.allclose(torch.softmax(got * factor, dim=-1), case.expected, atol=1e-5, rtol=1e-4)

    def unscaled(got, case):
        head_dim = case.args[0].shape[-1]
        if head_dim > 1 and softmax_matches(got, case, 1 / math.sqrt(head_dim)):
            return "the scores are not scaled: divide q·k by √head_dim (math.sqrt of the last axis of q)."
        return None

    def divided_by_head_dim(got, case):
        head_dim = case.args[0].shape[-1]
        if head_dim > 1 and softmax_matches(got, case, math.sqrt(head_dim)):
            return "you divided by head_dim; divide by its square root, √head_dim."
        return None

    def already_softmaxed(got, case):
        got = as_tensor(got).float()
        if got.shape[-1] > 1 and torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-4):
            return "rows of your answer sum to 1: return the scores *before* softmax (the mask comes first)."
        return None

    def transposed(got, case):
        if softmax_matches(got, case, transpose=True):
            return "transposed: entry (i, j) is query i against key j: multiply q by k with its last two axes swapped."
        return None

    return run_check(
        "check_attention_scores",
        fn,
        make_cases,
        _compare_scores,
        diagnoses=(unscaled, divided_by_head_dim, already_softmaxed, transposed),
        hint="every query against every key is one matrix product of q with kᵀ (swap k's last two axes), "
        "then divide by √head_dim.",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# Mixing the values
# --------------------------------------------------------------------------------------------------


def check_attention_mix(fn, *, quiet: bool = False):
    """``fn(weights, v)``: weights [B, heads, T, T], v [B, heads, T, head_dim] -> outputs [B, heads, T, head_dim]."""

    def make_cases():
        cases = []
        for label, q, k, v in _qkv_cases(seed_offset=10):
            weights = attention_weights(q, k, causal=True)
            cases.append(Case(label, (weights, v), naive_attention(q, k, v, causal=True)))
        return cases

    def weights_transposed(got, case):
        weights, v = case.args
        if tensors_match(got, weights.transpose(-2, -1) @ v):
            return "row i of the weights belongs to token i (the query): don't transpose the weights."
        return None

    return run_check(
        "check_attention_mix",
        fn,
        make_cases,
        compare_tensors(),
        diagnoses=(weights_transposed,),
        hint="token i's output is the sum over j of weights[i, j] x v[j]: for all tokens at once that is one "
        "matrix product, which works on the last two axes of [B, heads, ...] tensors.",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# Causal attention, whole
# --------------------------------------------------------------------------------------------------


def check_causal_attention(fn, *, quiet: bool = False):
    """``fn(q, k, v)`` -> softmax(mask(q kᵀ / √head_dim)) v [B, heads, T, head_dim], with the causal mask."""

    def make_cases():
        cases = _qkv_cases(seed_offset=20)
        return [Case(label, (q, k, v), naive_attention(q, k, v, causal=True)) for label, q, k, v in cases]

    def has_nan(got, case):
        if torch.isnan(as_tensor(got)).any():
            return (
                "NaN means some row of scores was masked completely (softmax of only -inf). A token must be "
                "allowed to look at itself: keep the diagonal in the mask."
            )
        return None

    def no_mask(got, case):
        q, k, v = case.args
        if q.shape[-2] > 1 and tensors_match(got, naive_attention(q, k, v, causal=False)):
            return "every token looked at the future too: mask the scores above the diagonal before softmax."
        return None

    def unscaled(got, case):
        q, k, v = case.args
        head_dim = q.shape[-1]
        if tensors_match(got, naive_attention(q * math.sqrt(head_dim), k, v, causal=True)):
            return "the scores are not scaled: divide q·kᵀ by √head_dim before the mask and softmax."
        return None

    def first_token(got, case):
        _, _, v = case.args
        got = as_tensor(got)
        if got.shape == v.shape and not torch.allclose(got[..., 0, :], v[..., 0, :], atol=1e-5):
            return (
                "token 0 may look only at itself, so its output must be exactly v[..., 0, :]. Check the mask "
                "(True on and below the diagonal) and that softmax runs over the last axis (the keys)."
            )
        return None

    return run_check(
        "check_causal_attention",
        fn,
        make_cases,
        compare_tensors(),
        diagnoses=(has_nan, no_mask, unscaled, first_token),
        hint="scores = q kᵀ / √head_dim; hide j > i with the causal mask (-inf); softmax over the keys; mix v.",
        quiet=quiet,
    )
