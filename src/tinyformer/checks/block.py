"""Lesson 03 exercises: the MLP, a pre-LN block with its residuals, the LM head.

The learner's function gets the package's own module (``MLP``, ``Block``) or the tied token table, and
must reproduce what the module computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinyformer.checks.core import Case, as_tensor, compare_tensors, run_check, tensors_match
from tinyformer.checks.models import tiny_model

SHAPES = ((1, 4), (2, 6), (3, 1))  # (batch, tokens)
CONFIGS = ((12, 3), (16, 2), (8, 1))  # (n_embd, n_head)


def _block_cases(build):
    cases = []
    for seed, ((batch, length), (n_embd, n_head)) in enumerate(zip(SHAPES, CONFIGS, strict=True)):
        model = tiny_model(seed=seed, n_embd=n_embd, n_head=n_head)
        x = torch.randn(batch, length, n_embd, generator=torch.Generator().manual_seed(100 + seed))  # [B, T, d]
        with torch.no_grad():
            cases.append(build(model, x, f"B={batch}, T={length}, d={n_embd}"))
    return cases


def check_mlp(fn, *, quiet: bool = False):
    """``fn(x, mlp)``: x [B, T, d] and the package's MLP module -> c_proj(GELU(c_fc(x))) [B, T, d]."""

    def build(model, x, label):
        mlp = model.transformer.h[0].mlp
        return Case(label, (x, mlp), mlp(x))

    def through(got, case, activation):
        x, mlp = case.args
        with torch.no_grad():
            return tensors_match(got, mlp.c_proj(activation(mlp.c_fc(x))))

    def exact_gelu(got, case):
        if through(got, case, F.gelu):
            return 'close, but GPT-2 uses the tanh approximation of GELU (approximate="tanh"), like mlp.gelu.'
        return None

    def relu(got, case):
        if through(got, case, F.relu):
            return "that is ReLU; GPT-2's MLP uses GELU (tanh approximation), the module's mlp.gelu."
        return None

    def linear(got, case):
        if through(got, case, lambda h: h):
            return "no non-linearity: apply GELU between the expansion (c_fc) and the projection (c_proj)."
        return None

    def expanded(got, case):
        x, _ = case.args
        if as_tensor(got).shape[-1] == 4 * x.shape[-1]:
            return "your output is 4d wide: project the expanded vector back to d with c_proj."
        return None

    return run_check(
        "check_mlp",
        fn,
        lambda: _block_cases(build),
        compare_tensors(),
        diagnoses=(exact_gelu, relu, linear, expanded),
        hint="expand with mlp.c_fc (d -> 4d), apply GPT-2's GELU, project back with mlp.c_proj (4d -> d).",
        quiet=quiet,
    )


def check_block(fn, *, quiet: bool = False):
    """``fn(x, block, mask)``: x [B, T, d], the package's Block, mask [1, 1, T, T] -> the block's output [B, T, d].

    ``block.attn(h, mask)`` returns (output, weights)."""

    def build(model, x, label):
        block = model.transformer.h[0]
        length = x.shape[1]
        mask = model.causal[:length, :length].view(1, 1, length, length)
        return Case(label, (x, block, mask), block(x, mask)[0])

    def without_residuals(case):
        x, block, mask = case.args
        with torch.no_grad():
            h = block.attn(block.ln_1(x), mask)[0]
            return block.mlp(block.ln_2(h))

    def post_ln(case):
        x, block, mask = case.args
        with torch.no_grad():
            h = block.ln_1(x + block.attn(x, mask)[0])
            return block.ln_2(h + block.mlp(h))

    def no_residual(got, case):
        if tensors_match(got, without_residuals(case)):
            return "no residuals: add each sub-layer's output to its input (x = x + ...), twice."
        return None

    def post_norm(got, case):
        if tensors_match(got, post_ln(case)):
            return (
                "that is post-LN (the original Transformer). GPT-2 normalises *before* each sub-layer: "
                "ln_1 feeds attention, ln_2 feeds the MLP."
            )
        return None

    def mlp_on_attention_input(got, case):
        x, block, mask = case.args
        with torch.no_grad():
            parallel = x + block.attn(block.ln_1(x), mask)[0] + block.mlp(block.ln_2(x))
        if tensors_match(got, parallel):
            return "the MLP must read the vector *after* the attention residual, not the block's input."
        return None

    return run_check(
        "check_block",
        fn,
        lambda: _block_cases(build),
        compare_tensors(),
        diagnoses=(no_residual, post_norm, mlp_on_attention_input),
        hint="two residual steps: x + attention(ln_1(x)), then that + mlp(ln_2(that)). block.attn returns a pair.",
        quiet=quiet,
    )


def check_lm_head(fn, *, quiet: bool = False):
    """``fn(h, wte)``: final hidden states h [B, T, d], token table wte [V, d] -> logits [B, T, V]."""

    def build(model, x, label):
        wte = model.transformer.wte.weight.detach().clone()
        return Case(f"{label}, V={wte.shape[0]}", (x, wte), model.lm_head(x))  # lm_head is tied to wte

    def probabilities(got, case):
        got = as_tensor(got)
        if got.shape == case.expected.shape and torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-4):
            return "you returned probabilities: the LM head gives logits; softmax (no weights) comes later."
        return None

    def last_only(got, case):
        expected = case.expected
        if as_tensor(got).shape == (expected.shape[0], expected.shape[2]) and expected.shape[1] > 1:
            return "you scored only the last position: return logits for every position, [B, T, V]."
        return None

    return run_check(
        "check_lm_head",
        fn,
        lambda: _block_cases(build),
        compare_tensors(),
        diagnoses=(probabilities, last_only),
        hint="one logit per vocabulary entry: the dot product of h with every row of wte, i.e. h times wteᵀ.",
        quiet=quiet,
    )
