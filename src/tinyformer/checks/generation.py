"""Lesson 05 exercises: append to the KV cache, pick the greedy next token.

Expected answers: ``tinyformer.kv_cache.KVCache.append`` and ``tinyformer.generate.next_token``.
"""

from __future__ import annotations

import torch

from tinyformer.checks.core import Case, as_tensor, compare_tensors, run_check, tensors_match
from tinyformer.generate import next_token
from tinyformer.kv_cache import KVCache

# (batch, heads, cached tokens, new tokens, head_dim): a prefill-sized append and one-token decodes.
APPEND_SHAPES = ((1, 2, 5, 1, 8), (2, 4, 3, 2, 8), (1, 1, 1, 1, 4), (3, 2, 6, 4, 2))


def check_cache_append(fn, *, quiet: bool = False):
    """``fn(cached, new)``: cached keys [B, heads, S, head_dim] + this step's keys [B, heads, T, head_dim]
    -> all keys [B, heads, S + T, head_dim], new rows after the cached ones (values work the same way)."""

    def make_cases():
        cases = []
        for seed, (batch, heads, cached_len, new_len, head_dim) in enumerate(APPEND_SHAPES):
            generator = torch.Generator().manual_seed(seed)
            cached, new = (torch.randn(batch, heads, n, head_dim, generator=generator) for n in (cached_len, new_len))
            cache = KVCache(n_layer=1)
            cache.append(0, cached, cached.clone())
            keys, _ = cache.append(0, new, new.clone())  # the package's append
            label = f"{cached_len} cached + {new_len} new tokens, B={batch}, heads={heads}, head_dim={head_dim}"
            cases.append(Case(label, (cached, new), keys))
        return cases

    def reversed_order(got, case):
        cached, new = case.args
        if tensors_match(got, torch.cat([new, cached], dim=2)):
            return "the new tokens went first: the cache keeps tokens in order, so append them *after* the cached ones."
        return None

    def wrong_axis(got, case):
        cached, new = case.args
        axes = {0: "the batch axis", 1: "the heads axis", 3: "the head_dim axis (the vector itself)"}
        got_shape = as_tensor(got).shape
        for axis, name in axes.items():
            if cached.shape[axis] + new.shape[axis] == got_shape[axis] != case.expected.shape[axis]:
                return f"you joined along {name}; tokens are axis 2 (-2) of [B, heads, tokens, head_dim]."
        return None

    return run_check(
        "check_cache_append",
        fn,
        make_cases,
        compare_tensors(atol=0, rtol=0),
        diagnoses=(reversed_order, wrong_axis),
        hint="concatenate along the tokens axis (axis 2 of [B, heads, tokens, head_dim]), cached rows first.",
        quiet=quiet,
    )


def check_greedy_next_token(fn, *, quiet: bool = False):
    """``fn(logits)``: logits [B, T, V] from the model -> the greedy next token of every row, ids [B]."""

    def make_cases():
        cases = []
        for seed, (batch, length, vocab) in enumerate(((1, 4, 11), (3, 6, 50), (2, 1, 7))):
            logits = torch.randn(batch, length, vocab, generator=torch.Generator().manual_seed(seed))
            expected = next_token(logits[:, -1, :], temperature=0.0)  # [B]
            cases.append(Case(f"B={batch}, T={length}, V={vocab}", (logits,), expected))
        return cases

    def first_position(got, case):
        (logits,) = case.args
        if logits.shape[1] > 1 and tensors_match(got, logits[:, 0, :].argmax(-1)):
            return "you used the first position; the prediction for the *next* token is at the last one, [:, -1]."
        return None

    def kept_axis(got, case):
        if tensors_match(got, case.expected[:, None]):
            return "right ids, one axis too many: return a 1-D tensor [B] (e.g. argmax without keepdim)."
        return None

    def over_positions(got, case):
        (logits,) = case.args
        if as_tensor(got).shape == logits.shape[::2]:
            return "that is an argmax over positions: take it over the vocabulary (the last axis)."
        return None

    return run_check(
        "check_greedy_next_token",
        fn,
        make_cases,
        compare_tensors(atol=0, rtol=0),
        diagnoses=(first_position, kept_axis, over_positions),
        hint="take the logits of the last position of each row, then the id with the highest logit.",
        quiet=quiet,
    )
