"""Lesson 17 exercise: one step of the token automaton (a token's characters walked through the character DFA).

Expected answer: :meth:`tinyformer.structured.TokenAutomaton.walk_token`, which fills the ``next_state`` table that
masks the logits.
"""

from __future__ import annotations

from tinyformer.checks.core import Case, compare_numbers, run_check
from tinyformer.structured import TokenAutomaton, token_texts
from tinyformer.tokenizer import build_tokenizer

STEP_PATTERNS = (r"(cat|dog)s?(run|sleep)s?\.", r"the(fox|foxes)(with|near)the(mouse|mice)", r"(cat|bird)*\.")


def check_token_step(fn, *, quiet: bool = False):
    """``fn(transitions, state, text)``: transitions[s] maps a character to the next DFA state -> the state after
    reading every character of ``text`` from ``state``, or -1 as soon as a character has no transition."""
    tokenizer = build_tokenizer()
    texts = [t for t in token_texts(tokenizer) if t is not None]

    def make_cases():
        cases = []
        for pattern in STEP_PATTERNS:
            automaton = TokenAutomaton(pattern, token_texts(tokenizer), tokenizer.eos_token_id)
            transitions = automaton.dfa.transitions
            for state in automaton.states[:: max(1, len(automaton.states) // 3)]:
                for text in texts[:: 5 + state % 3]:
                    expected = automaton.walk_token(state, text)
                    cases.append(
                        Case(f"{pattern!r}, state {state}, token {text!r}", (transitions, state, text), expected)
                    )
        return cases

    def first_character_only(got, case):
        transitions, state, text = case.args
        if got == transitions[state].get(text[0], -1) and len(text) > 1:
            return "you followed only the first character: a token is several characters, walk them all in turn."
        return None

    def kept_walking(got, case):
        transitions, state, text = case.args
        if case.expected == -1 and got != -1:
            return "once a character has no transition the match is dead for good: return -1 at once."
        return None

    return run_check(
        "check_token_step",
        fn,
        make_cases,
        compare_numbers(),
        diagnoses=(first_character_only, kept_walking),
        hint="for each character c of text: state = transitions[state].get(c); stop with -1 when that is None.",
        quiet=quiet,
    )
