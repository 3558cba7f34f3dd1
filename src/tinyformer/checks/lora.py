"""Lesson 15 exercise: the LoRA update, y = W x + (alpha / r) B (A x).

Expected answer: :class:`tinyformer.lora.LoRALinear` (what add_lora puts on the model's projections)."""

from __future__ import annotations

import torch
import torch.nn as nn

from tinyformer.checks.core import Case, compare_tensors, run_check, seeded, tensors_match
from tinyformer.lora import LoRALinear

LORA_SHAPES = ((3, 8, 6, 2, 4.0), (5, 16, 16, 4, 8.0), (2, 32, 12, 1, 1.0))  # (tokens, in, out, r, alpha)


def lora_update(x, weight, lora_a, lora_b, alpha):
    """The package's answer: a LoRALinear holding these matrices, applied to x."""
    base = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lora = LoRALinear(base, {"all": (0, weight.shape[0])}, lora_a.shape[0], alpha, seeded(0))
    with torch.no_grad():
        base.weight.copy_(weight)
        lora.lora_A["all"].copy_(lora_a)
        lora.lora_B["all"].copy_(lora_b)
        return lora(x)


def check_lora_update(fn, *, quiet: bool = False):
    """``fn(x, W, A, B, alpha)``: x [T, in], W [out, in], A [r, in], B [out, r] -> W x + (alpha / r) B A x for every
    row of x ([T, out]); r is A's number of rows."""

    def make_cases():
        cases = []
        for seed, (t, d_in, d_out, r, alpha) in enumerate(LORA_SHAPES):
            g = seeded(seed)
            x, w = torch.randn(t, d_in, generator=g), torch.randn(d_out, d_in, generator=g)
            a, b = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
            args = (x, w, a, b, alpha)
            cases.append(Case(f"x {[t, d_in]}, W {[d_out, d_in]}, r={r}, alpha={alpha}", args, lora_update(*args)))
        return cases

    def unscaled(got, case):
        x, w, a, b, alpha = case.args
        if tensors_match(got, x @ w.T + x @ a.T @ b.T):
            return "the update is scaled by alpha / r before it is added."
        return None

    def alpha_only(got, case):
        x, w, a, b, alpha = case.args
        if a.shape[0] != 1 and tensors_match(got, x @ w.T + alpha * (x @ a.T @ b.T)):
            return "divide alpha by the rank r (A's number of rows): the scale is alpha / r."
        return None

    def update_only(got, case):
        x, w, a, b, alpha = case.args
        if tensors_match(got, (alpha / a.shape[0]) * (x @ a.T @ b.T)):
            return "the frozen weight's own output W x is still there: add the update to it."
        return None

    return run_check(
        "check_lora_update",
        fn,
        make_cases,
        compare_tensors(),
        diagnoses=(unscaled, alpha_only, update_only),
        hint="rows of x are tokens: x @ W.T is W x for each; the update is (alpha / r) * (x @ A.T) @ B.T.",
        quiet=quiet,
    )
