"""Lesson 01 exercises: look tokens up in wte, positions up in wpe, add them."""

from __future__ import annotations

import torch

from tinyformer.checks.core import Case, compare_tensors, run_check, tensors_match
from tinyformer.checks.models import random_ids, tiny_model

SHAPES = ((1, 5), (2, 7), (3, 1), (2, 16))  # (batch, tokens); T=16 uses every row of the position table


def _first_hidden_state(model, ids: torch.Tensor) -> torch.Tensor:
    """What the model's first block receives (tok + pos), read from the package's own forward pass."""
    seen = {}
    hook = model.transformer.drop.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0]))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        hook.remove()
    return seen["x"]


def _cases(with_expected):
    cases = []
    for seed, (batch, length) in enumerate(SHAPES):
        model = tiny_model(seed=seed, vocab_size=19 + seed)
        ids = random_ids(model, batch, length, seed)
        cases.append(with_expected(model, ids))
    return cases


def _label(model, ids) -> str:
    return f"B={ids.shape[0]}, T={ids.shape[1]}, V={model.config.vocab_size}"


def _tables(model):
    return model.transformer.wte.weight.detach().clone(), model.transformer.wpe.weight.detach().clone()


def check_embedding_lookup(fn, *, quiet: bool = False):
    """``fn(wte, ids)``: wte [V, d], ids [B, T] -> the token vectors [B, T, d] (one row of wte per id)."""

    def case(model, ids):
        wte, _ = _tables(model)
        with torch.no_grad():
            expected = model.transformer.wte(ids)  # the package's nn.Embedding
        return Case(_label(model, ids), (wte, ids), expected)

    def one_hot_scores(got, case):
        wte, ids = case.args
        if tuple(got.shape) == (*ids.shape, wte.shape[0]):
            return "your answer has one number per vocabulary entry: return the *rows* of wte, [B, T, d]."
        return None

    def transposed(got, case):
        if tensors_match(got, case.expected.transpose(-2, -1)):
            return "right numbers, wrong layout: the vector of each token goes on the last axis, [B, T, d]."
        return None

    return run_check(
        "check_embedding_lookup",
        fn,
        lambda: _cases(case),
        compare_tensors(),
        diagnoses=(one_hot_scores, transposed),
        hint="row i of wte is the vector of token id i: pick one row per id (indexing works on [B, T] ids).",
        quiet=quiet,
    )


def check_position_lookup(fn, *, quiet: bool = False):
    """``fn(wpe, T)``: wpe [n_positions, d] -> the position vectors [T, d] of positions 0 .. T-1."""

    def case(model, ids):
        _, wpe = _tables(model)
        length = ids.shape[1]
        with torch.no_grad():
            expected = model.transformer.wpe(torch.arange(length))  # the package's nn.Embedding
        return Case(f"T={length}, n_positions={wpe.shape[0]}", (wpe, length), expected)

    def starts_at_one(got, case):
        wpe, length = case.args
        if length < wpe.shape[0] and tensors_match(got, wpe[1 : length + 1]):
            return "off by one: the first token is at position 0, so use rows 0 .. T-1."
        return None

    def single_row(got, case):
        if getattr(got, "dim", lambda: 0)() == 1:
            return "you returned one vector; return all T rows, one per position (0 .. T-1)."
        return None

    return run_check(
        "check_position_lookup",
        fn,
        lambda: _cases(case),
        compare_tensors(),
        diagnoses=(starts_at_one, single_row),
        hint="row p of wpe is the vector of position p; a sequence of T tokens uses rows 0 .. T-1.",
        quiet=quiet,
    )


def check_input_embedding(fn, *, quiet: bool = False):
    """``fn(wte, wpe, ids)``: ids [B, T] -> token vectors + position vectors [B, T, d] (the first block's input)."""

    def case(model, ids):
        wte, wpe = _tables(model)
        return Case(_label(model, ids), (wte, wpe, ids), _first_hidden_state(model, ids))

    def tokens_only(got, case):
        wte, _, ids = case.args
        if tensors_match(got, wte[ids]):
            return "these are the token vectors alone: add each position's vector (a row of wpe) to them."
        return None

    def positions_by_id(got, case):
        wte, wpe, ids = case.args
        if ids.max() < wpe.shape[0] and tensors_match(got, wte[ids] + wpe[ids]):
            return "you looked positions up by token id: the position of the i-th token is i, whatever its id."
        return None

    def positions_from_one(got, case):
        wte, wpe, ids = case.args
        length = ids.shape[1]
        if length < wpe.shape[0] and tensors_match(got, wte[ids] + wpe[1 : length + 1]):
            return "off by one: the first token is at position 0."
        return None

    return run_check(
        "check_input_embedding",
        fn,
        lambda: _cases(case),
        compare_tensors(),
        diagnoses=(tokens_only, positions_by_id, positions_from_one),
        hint="look each id up in wte ([B, T, d]), look positions 0 .. T-1 up in wpe ([T, d]) and add; "
        "broadcasting repeats the positions for every row of the batch.",
        quiet=quiet,
    )
