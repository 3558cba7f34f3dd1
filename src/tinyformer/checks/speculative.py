"""Lesson 16 exercise: the acceptance rule of speculative decoding, checked against
:func:`tinyformer.engine.speculative.accepted_tokens` on small made-up cases."""

from __future__ import annotations

from tinyformer.checks.core import Case, run_check
from tinyformer.engine.speculative import accepted_tokens

# (draft tokens, the target's greedy token after the context and after each draft token)
ACCEPT_CASES = (
    ([5, 6, 7], [5, 6, 7, 8]),  # all accepted, plus the target's token after the last draft
    ([5, 6, 7], [5, 9, 7, 8]),  # a disagreement at the second; the third agrees again but comes too late
    ([5, 6, 7], [4, 6, 7, 8]),  # nothing accepted: the plain decoding token
    ([3], [3, 3]),
    ([2, 2, 2, 2, 2], [2, 2, 1, 2, 2, 2]),
    ([1, 2], [1, 2, 3]),
    ([9, 9], [8, 9, 9]),
)


def check_acceptance_rule(fn, *, quiet: bool = False):
    """``fn(draft_ids, target_ids)`` -> the tokens a request keeps this step (``target_ids`` has one more entry than
    ``draft_ids``: the target's greedy token after the context, then after each draft token)."""

    def make_cases():
        return [Case(f"draft={d}, target={t}", (list(d), list(t)), accepted_tokens(d, t)) for d, t in ACCEPT_CASES]

    def compare(got, expected):
        if not isinstance(got, (list, tuple)) or not all(isinstance(x, int) for x in got):
            return f"expected a list of token ids like {expected!r}, got {got!r}."
        return None if list(got) == expected else f"expected {expected!r}, got {list(got)!r}."

    def no_bonus(got, case):
        if isinstance(got, (list, tuple)) and list(got) == case.expected[:-1]:
            return "the target's own token after the accepted drafts is kept too: every step gains at least one token."
        return None

    def kept_after_mismatch(got, case):
        if (
            isinstance(got, (list, tuple))
            and len(got) > len(case.expected)
            and list(got[: len(case.expected) - 1]) == (case.expected[:-1])
        ):
            return "stop at the FIRST disagreement: a later draft token was guessed after a wrong one, so it is void."
        return None

    def draft_not_target(got, case):
        draft, target = case.args
        n = len(case.expected) - 1
        if isinstance(got, (list, tuple)) and n < len(draft) and list(got) == draft[: n + 1]:
            return "at the disagreement keep the TARGET's token, not the draft's: only the target's choices are kept."
        return None

    return run_check(
        "check_acceptance_rule",
        fn,
        make_cases,
        compare,
        diagnoses=(no_bonus, draft_not_target, kept_after_mismatch),
        hint="count n, the drafts equal to the target's token at the same place, stopping at the first that is not; "
        "return target_ids[: n + 1].",
        quiet=quiet,
    )
