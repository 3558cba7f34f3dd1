"""Lesson 12 exercises: pooling with a padding mask, Hamilton rounding, the context budget.

Expected answers come from :mod:`tinyformer.retrieval` (``mean_pool``, ``hamilton``, ``context_room``).
"""

from __future__ import annotations

import torch

from tinyformer.checks.core import Case, compare_numbers, compare_tensors, run_check, seeded, tensors_match
from tinyformer.retrieval import context_room, hamilton, mean_pool

# --------------------------------------------------------------------------------------------------
# Mean pooling over the real tokens only
# --------------------------------------------------------------------------------------------------


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])  # [B, T], right padding


def check_mean_pool(fn, *, quiet: bool = False):
    """``fn(hidden [B, T, d], mask [B, T])`` -> [B, d]: the mean of each row's real (mask 1) tokens."""

    def make_cases():
        cases = []
        for seed, lengths, width, d in ((0, [3], 3, 4), (1, [2, 5], 5, 8), (2, [1, 4, 6], 6, 16)):
            hidden = torch.randn(len(lengths), width, d, generator=seeded(seed))  # padding rows hold noise, too
            mask = _mask(lengths, width)
            cases.append(Case(f"B={len(lengths)}, lengths={lengths}, T={width}, d={d}", (hidden, mask), None))
        return [Case(c.label, c.args, mean_pool(*c.args)) for c in cases]

    def averaged_padding(got, case):
        hidden, _ = case.args
        if tensors_match(got, hidden.mean(dim=1)):
            return "you averaged the padding too: multiply by the mask and divide by the number of real tokens."
        return None

    def summed(got, case):
        hidden, mask = case.args
        if tensors_match(got, (hidden * mask.unsqueeze(-1)).sum(dim=1)):
            return "that is the sum over real tokens; divide by how many there are (mask.sum(dim=1))."
        return None

    return run_check(
        "check_mean_pool",
        fn,
        make_cases,
        compare_tensors(),
        diagnoses=(averaged_padding, summed),
        hint="weights = mask[..., None]; (hidden * weights).sum(1) / weights.sum(1).",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# Hamilton (largest remainder) apportionment
# --------------------------------------------------------------------------------------------------

HAMILTON_CASES = (
    ([50, 40, 60], 100),  # the recipe's example: 33, 27, 40
    ([28, 28, 28], 3),  # equal remainders: the earlier retriever first
    ([6, 6, 2], 10),
    ([6, 6, 2], 11),  # the Alabama paradox: the third share drops from 2 to 1
    ([3, 4], 10),  # fits: everyone gets what they asked for
    ([5, 0, 7], 6),
)


def check_hamilton(fn, *, quiet: bool = False):
    """``fn(requests, total)`` -> integer shares: quotas' whole parts, then one more each to the largest
    remainders (ties: the earlier request), summing to min(total, sum(requests))."""

    def make_cases():
        return [Case(f"requests={r}, total={t}", (list(r), t), hamilton(r, t)) for r, t in HAMILTON_CASES]

    def compare(got, expected):
        if not isinstance(got, (list, tuple)) or not all(isinstance(x, int) for x in got):
            return f"expected a list of ints like {expected}, got {got!r}."
        return None if list(got) == expected else f"expected {expected}, got {list(got)}."

    def rounded_quotas(got, case):
        requests, total = case.args
        quotas = [r * total / sum(requests) for r in requests]
        if isinstance(got, (list, tuple)) and list(got) == [round(q) for q in quotas] and sum(got) != total:
            return f"rounding each quota alone gives {sum(got)} seats, not {total}: hand out leftovers by remainder."
        return None

    def more_than_asked(got, case):
        requests, total = case.args
        if sum(requests) <= total and isinstance(got, (list, tuple)) and list(got) != requests:
            return "when the requests fit the total, grant every request in full."
        return None

    return run_check(
        "check_hamilton",
        fn,
        make_cases,
        compare,
        diagnoses=(more_than_asked, rounded_quotas),
        hint="quota = request * total / sum; floor them; give the leftover seats to the largest remainders.",
        quiet=quiet,
    )


# --------------------------------------------------------------------------------------------------
# The context budget
# --------------------------------------------------------------------------------------------------

BUDGET_CASES = ((128, 12, 16, 32), (128, 10, 8, 24), (256, 40, 64, 50), (2048, 300, 256, 150))


def check_parents_that_fit(fn, *, quiet: bool = False):
    """``fn(max_model_len, prompt_tokens, answer_tokens, parent_tokens)`` -> how many parents of at most
    ``parent_tokens`` tokens always fit beside the prompt and the answer."""

    def make_cases():
        return [
            Case(
                f"max_model_len={L}, prompt={p}, answer={a}, parent={c}",
                (L, p, a, c),
                context_room(L, prompt_tokens=p, answer_tokens=a) // c,
            )
            for L, p, a, c in BUDGET_CASES
        ]

    def forgot_answer(got, case):
        L, p, a, c = case.args
        return "the answer's tokens count too: max_model_len caps prompt + output." if got == (L - p) // c else None

    def rounded_up(got, case):
        L, p, a, c = case.args
        return (
            "a parent that half fits does not fit: round down."
            if got == -(-(L - p - a) // c) != case.expected
            else None
        )

    return run_check(
        "check_parents_that_fit",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(forgot_answer, rounded_up),
        hint="(max_model_len - prompt - answer) tokens are left; how many whole parents is that?",
        quiet=quiet,
    )
