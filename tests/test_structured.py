"""Structured outputs by hand (tinyformer.structured): the character automaton against Python's ``re`` (an
independent implementation), the token automaton against a brute-force enumeration of the matching token
sequences, and decoding on the trained nano-llama: without the mask some sampled outputs break the pattern,
with it none do."""

from __future__ import annotations

import itertools
import random
import re

import pytest
import torch

from tinyformer import data
from tinyformer.generate import generate
from tinyformer.structured import (
    choice_pattern,
    compile_regex,
    for_tokenizer,
    generate_structured,
    nfa_from_tree,
    parse,
)
from tinyformer.tokenizer import build_tokenizer
from tinyformer.train import load_or_train

# Patterns over a small alphabet that exercise every construct of the subset, alone and nested.
PATTERNS = [
    "abc",
    "a|b|cd",
    "a?b",
    "a*",
    "(ab)+c?",
    "(a|bc)*d",
    "[abc]+",
    "[^ab]c*",
    "[a-c]x[b-d]?",
    "a.c",
    "\\d+(\\.\\d\\d?)?",
    "\\w\\s\\W?",
    "[\\d.]+\\-?",
    "(a|)b",
    "((a|b)(c|d)?)*e",
    "x(y(z)?)?",
    "\\(a\\)\\*",
    "",
    "a|",
    "(|b)+",
]
ALPHABET = "abcdexyz1.- ()*_"
# A regex of the suite's words: the grammar sees tokens joined without spaces ("thecatsleeps.").
SENTENCE = r"(cat|dog)s?(run|sleep|jump)s?(today|again)\."


def random_strings(rng: random.Random, n: int, max_len: int = 7) -> list[str]:
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def strings_from(dfa, rng: random.Random, n: int, max_len: int = 8) -> list[str]:
    """Random walks through the DFA: mostly texts it accepts, so both answers get tested often."""
    texts = []
    for _ in range(n):
        state, text = 0, ""
        while dfa.transitions[state] and len(text) < max_len and not (state in dfa.accepting and rng.random() < 0.3):
            c = rng.choice(sorted(dfa.transitions[state]))
            state, text = dfa.transitions[state][c], text + c
        texts.append(text)
    return texts


@pytest.mark.parametrize("pattern", PATTERNS)
def test_character_automaton_agrees_with_re_fullmatch(pattern):
    rng = random.Random(pattern)
    dfa = compile_regex(pattern, ALPHABET)
    texts = random_strings(rng, 400) + strings_from(dfa, rng, 200)
    texts += [t[:cut] + rng.choice(ALPHABET) + t[cut:] for t in texts[-50:] for cut in [rng.randint(0, len(t))]]
    disagree = [t for t in texts if dfa.matches(t) != bool(re.fullmatch(pattern, t))]
    assert disagree == []
    assert sum(bool(re.fullmatch(pattern, t)) for t in texts) >= 10  # the test saw matches, not only misses


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("a{2}", "counted repetition"),
        ("(?:a)", "'(?' groups"),
        ("a\\b", "escape \\b is not supported"),
        ("\\1", "escape \\1 is not supported"),
        ("[]", "empty character class"),
        ("[ab", "character class is not closed"),
        ("[z-a]", "bad range"),
        ("a**", "second quantifier"),
        ("a+?", "second quantifier"),
        ("*a", "nothing to repeat"),
        ("(a", "group is not closed"),
        ("a)", "closes no group"),
        ("^a", "anchor '^'"),
        ("a$", "anchor '$'"),
        ("a\\", "lone backslash"),
    ],
)
def test_unsupported_or_broken_syntax_is_a_value_error(pattern, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse(pattern)


def test_a_pattern_no_token_sequence_spells_is_refused(tokenizer):
    for pattern in ("the cat", "thex", "[0-9]+", "cat(s|z)z"):  # spaces and digits are in no token
        with pytest.raises(ValueError, match="no sequence of this vocabulary's tokens matches"):
            for_tokenizer(pattern, tokenizer)
    with pytest.raises(ValueError, match="must be a string"):
        for_tokenizer(None, tokenizer)


def sentence_texts() -> set[str]:
    """Every text SENTENCE matches, written out from its parts (independent of any regex engine)."""
    nouns = [n + s for n in ("cat", "dog") for s in ("", "s")]
    verbs = [v + s for v in ("run", "sleep", "jump") for s in ("", "s")]
    return {n + v + a + "." for n, v, a in itertools.product(nouns, verbs, ("today", "again"))}


def test_token_automaton_allows_exactly_the_tokens_that_continue_a_match(tokenizer):
    automaton = for_tokenizer(SENTENCE, tokenizer)
    texts, words = sentence_texts(), tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    eos = tokenizer.eos_token_id
    # brute force: grow every token sequence whose text is a prefix of some match, one token at a time
    frontier = [()]
    for _ in range(6):
        grown = []
        for prefix in frontier:
            spelled = "".join(words[t] for t in prefix)
            expected = {t for t, w in enumerate(words) if any(m.startswith(spelled + w) for m in texts)}
            expected -= set(tokenizer.all_special_ids)
            expected |= {eos} if spelled in texts else set()
            state = 0
            for t in prefix:
                state = automaton.advance(state, t)
            assert set(automaton.allowed[state].nonzero().flatten().tolist()) == expected, spelled
            grown += [prefix + (t,) for t in expected - {eos}]
        frontier = grown
    assert frontier == []  # every match is at most 5 tokens long, so the walk ended
    assert automaton.accepts(tokenizer.convert_tokens_to_ids(["cats", "sleep", "today", "."]) + [eos])


def test_advancing_with_a_masked_token_is_refused(tokenizer):
    automaton = for_tokenizer(SENTENCE, tokenizer)
    with pytest.raises(ValueError, match="is not allowed in state 0"):
        automaton.advance(0, tokenizer.convert_tokens_to_ids("the"))


def test_choice_pattern_matches_exactly_the_choices(tokenizer):
    choices = ["cats", "the dog.", "a|b", "(x)*"]
    pattern = choice_pattern(choices)
    for text in choices + ["cat", "the dog", "a", "(x)", "x", ""]:
        assert bool(re.fullmatch(pattern, text)) == (text in choices)
        assert compile_regex(pattern, "".join(choices)).matches(text) == (text in choices)
    for bad in ([], "cats", [""], [3]):
        with pytest.raises(ValueError, match="non-empty list of non-empty strings"):
            choice_pattern(bad)


# ----- decoding with the trained model ---------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    return load_or_train("nano", arch="llama", progress=False)


def first_sentence(tokens: list[int], tokenizer) -> list[int]:
    """The tokens up to and including the first full stop: what an unconstrained model offers as an answer."""
    words = tokenizer.convert_ids_to_tokens(tokens)
    return tokens[: words.index(".") + 1] if "." in words else tokens


@pytest.mark.slow
def test_sampled_outputs_break_the_pattern_without_the_mask_and_never_with_it(llama):
    model, tokenizer = llama
    automaton = for_tokenizer(SENTENCE, tokenizer)
    prompt = tokenizer.encode("the")
    free, masked = [], []
    for seed in range(40):
        sampled = generate(model, prompt, 12, temperature=1.0, seed=seed).tokens[0]
        free.append(automaton.text_of(first_sentence(sampled, tokenizer)))
        out = generate_structured(model, prompt, automaton, 12, temperature=1.0, seed=seed)
        assert out.stop_reason == "eos" and out.tokens[-1] == tokenizer.eos_token_id
        masked.append(automaton.text_of(out.tokens))
    broken_free = sum(re.fullmatch(SENTENCE, text) is None for text in free)
    broken_masked = sum(re.fullmatch(SENTENCE, text) is None for text in masked)
    print(f"\n{broken_free}/40 unconstrained samples break {SENTENCE!r}; with the mask {broken_masked}/40")
    assert broken_free > 0 and broken_masked == 0
    assert len(set(masked)) > 1  # the mask constrains the form, sampling still varies inside it


@pytest.mark.slow
def test_greedy_masked_decoding_picks_the_best_allowed_token_each_step(llama):
    model, tokenizer = llama
    automaton = for_tokenizer(SENTENCE, tokenizer)
    prompt = tokenizer.encode("the cat near the")
    out = generate_structured(model, prompt, automaton, 12)
    state = 0
    for i, token in enumerate(out.tokens):  # recompute each step without the cache: same choice
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + out.tokens[:i]]))[0, -1]
        assert token == int(automaton.mask(logits, state).argmax())
        if token != tokenizer.eos_token_id:
            state = automaton.advance(state, token)
    assert re.fullmatch(SENTENCE, automaton.text_of(out.tokens))
    assert 0 < out.mask_seconds < out.step_seconds


def test_generate_structured_refuses_bad_input(tokenizer):
    from tinyformer.config import ModelConfig
    from tinyformer.model import Transformer

    model = Transformer(ModelConfig.preset("nano", vocab_size=len(tokenizer)))
    automaton = for_tokenizer(SENTENCE, tokenizer)
    with pytest.raises(ValueError, match="non-empty list of token ids"):
        generate_structured(model, [], automaton, 4)
    with pytest.raises(ValueError, match="build it with this model's tokenizer"):
        generate_structured(model, [3], for_tokenizer("cat", build_tokenizer(data.NOUNS)), 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_structured(model, [3], automaton, -1)


def test_xgrammar_allows_character_prefixes_that_no_token_can_finish(tokenizer):
    """vLLM's backend masks by characters: 'cat' may start 'cats', so xgrammar allows it, although no token can
    then add the 's' (the request dies there: HTTP 500 in vLLM). The token automaton allows only whole ways out."""
    import xgrammar  # installed with vLLM (vLLM 0.32 requires it)

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    matcher = xgrammar.GrammarMatcher(xgrammar.GrammarCompiler(info).compile_regex("cats|dogs"))
    bitmask = xgrammar.allocate_token_bitmask(1, len(tokenizer))
    matcher.fill_next_token_bitmask(bitmask)
    logits = torch.zeros(1, len(tokenizer))
    xgrammar.apply_token_bitmask_inplace(logits, bitmask)
    theirs = tokenizer.convert_ids_to_tokens(torch.isfinite(logits[0]).nonzero().flatten().tolist())
    automaton = for_tokenizer("cats|dogs", tokenizer)
    mine = tokenizer.convert_ids_to_tokens(automaton.allowed[0].nonzero().flatten().tolist())
    assert sorted(theirs) == ["cat", "cats", "dog", "dogs"] and sorted(mine) == ["cats", "dogs"]
    assert matcher.accept_token(tokenizer.convert_tokens_to_ids("cat"))
    matcher.fill_next_token_bitmask(bitmask)
    logits = torch.zeros(1, len(tokenizer))
    xgrammar.apply_token_bitmask_inplace(logits, bitmask)
    assert not torch.isfinite(logits).any()  # a dead end: every token masked


def test_closure_takes_a_generator_as_well_as_a_list():
    nfa = nfa_from_tree(parse("(cat|dog)s?run"))
    assert nfa.closure(s for s in [nfa.start]) == nfa.closure([nfa.start]) and len(nfa.closure([nfa.start])) > 1
