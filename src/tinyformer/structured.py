"""Structured outputs by hand: a regular expression becomes a mask on the logits, so greedy decoding can only
produce text the pattern matches.

Four steps, each small enough to read:

1. ``parse`` turns a pattern into a tree. The supported subset, and nothing else (anything outside it is a
   ValueError naming the construct): literal characters, ``\\`` escapes of punctuation, ``\\d \\w \\s`` (and
   ``\\D \\W \\S``), ``\\n \\t``, ``.`` (any character but a newline), character classes ``[abc]``, ``[a-z]``,
   ``[^...]``, alternation ``|``, groups ``( )``, and the quantifiers ``?``, ``*``, ``+``. The whole output must
   match (like ``re.fullmatch``), so there are no anchors.
2. ``nfa_from_tree`` builds Thompson's NFA: a few states per node, joined by empty (epsilon) moves.
3. ``dfa_from_nfa`` runs the subset construction over an alphabet (the characters of the vocabulary's tokens:
   no other character can ever be produced) and drops states from which no accepting state can be reached,
   so a missing transition means "this text can no longer match".
4. ``TokenAutomaton`` lifts the character DFA to tokens: from each DFA state, a token is allowed if walking its
   characters keeps the DFA alive and ends in a state from which some further tokens reach acceptance;
   end-of-text is allowed exactly in accepting states. Two tables, ``next_state[S, V]`` and ``allowed[S, V]``,
   are computed once per pattern; decoding then costs one row lookup and one ``masked_fill`` per token.
   (xgrammar, vLLM's default backend, stops at the character level: for ``cats|dogs`` it also allows the token
   ``cat``, after which no token fits and vLLM fails the request. Where no such dead end exists, the masks agree.)

What a token's text is: this suite's tokenizer is word-level, and the grammar sees the tokens' strings joined
with nothing in between, exactly as vLLM's grammar backend (xgrammar, "RAW" vocabulary) sees them. The sentence
``the cat sleeps .`` is the text ``thecatsleeps.`` to a grammar, so patterns are written in the vocabulary's
words: ``the(cat|dog)s?(sleep|run)s?\\.``. Special tokens (end-of-text, padding, unknown) have no text: only
end-of-text is ever allowed, and only where the text so far matches.

Boundary: patterns, automata, the vocabulary and the decoding loop live here. The model only supplies logits;
serving (vLLM's own structured outputs) is reached through tinyformer.serving.client with a
``structured_outputs`` request field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tinyformer.generate import next_token, tokens_that_fit
from tinyformer.kv_cache import KVCache
from tinyformer.model import Transformer, eval_mode

QUANTIFIERS = "?*+"
SHORTHANDS = {"d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace}
CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


# ----- 1. the pattern as a tree ------------------------------------------------------------------


@dataclass(frozen=True)
class CharSet:
    """The characters one position may hold: listed characters, ranges and shorthands, or all but those."""

    chars: frozenset[str] = frozenset()
    ranges: tuple[tuple[str, str], ...] = ()
    shorthands: tuple[str, ...] = ()  # "d", "w", "s" (lower case) or "D", "W", "S" (their complements)
    negated: bool = False

    def __contains__(self, c: str) -> bool:
        inside = (
            c in self.chars
            or any(lo <= c <= hi for lo, hi in self.ranges)
            or any(SHORTHANDS[s.lower()](c) != s.isupper() for s in self.shorthands)
        )
        return inside != self.negated


ANY_BUT_NEWLINE = CharSet(frozenset("\n"), negated=True)


@dataclass(frozen=True)
class Chars:
    charset: CharSet


@dataclass(frozen=True)
class Concat:
    parts: tuple


@dataclass(frozen=True)
class Alt:
    options: tuple


@dataclass(frozen=True)
class Repeat:
    node: object
    quantifier: str  # "?", "*" or "+"


class _Parser:
    """Recursive descent: alternation of concatenations of quantified atoms."""

    def __init__(self, pattern: str):
        self.pattern, self.i = pattern, 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"pattern {self.pattern!r}, position {self.i}: {what}")

    def peek(self) -> str | None:
        return self.pattern[self.i] if self.i < len(self.pattern) else None

    def take(self) -> str:
        c = self.pattern[self.i]
        self.i += 1
        return c

    def alternation(self):
        options = [self.concatenation()]
        while self.peek() == "|":
            self.take()
            options.append(self.concatenation())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def concatenation(self):
        parts = []
        while self.peek() not in (None, "|", ")"):
            parts.append(self.quantified())
        return parts[0] if len(parts) == 1 else Concat(tuple(parts))

    def quantified(self):
        if self.peek() in QUANTIFIERS:
            c = self.peek()
            raise self.fail(f"{c!r} has nothing to repeat; escape it (\\{c}) to mean the character.")
        node = self.atom()
        if self.peek() is not None and self.peek() in QUANTIFIERS:
            node = Repeat(node, self.take())
            if self.peek() is not None and self.peek() in QUANTIFIERS:
                raise self.fail(
                    f"a second quantifier {self.peek()!r} right after one (lazy or possessive repeats, or a repeat "
                    "of a repeat) is not supported; put the repeated part in a group: (a?)*."
                )
        return node

    def atom(self):
        c = self.take()
        if c == "(":
            if self.peek() == "?":
                raise self.fail("'(?' groups (non-capturing, lookaround, flags, names) are not supported; use (...).")
            inner = self.alternation()
            if self.peek() != ")":
                raise self.fail("a group is not closed: add ')'.")
            self.take()
            return inner
        if c == ")":
            raise self.fail("')' closes no group: remove it or escape it as \\).")
        if c == "[":
            return Chars(self.char_class())
        if c == ".":
            return Chars(ANY_BUT_NEWLINE)
        if c == "\\":
            return Chars(self.escape())
        if c == "{":
            raise self.fail("counted repetition {m,n} is not supported: write the repeats out, e.g. aa?a? for a{1,3}.")
        if c in "^$":
            raise self.fail(f"anchor {c!r} is not supported (and not needed): the whole output must match the pattern.")
        return Chars(CharSet(frozenset(c)))

    def escape(self) -> CharSet:
        if self.peek() is None:
            raise self.fail("the pattern ends with a lone backslash; write \\\\ for a backslash.")
        c = self.take()
        if c.lower() in SHORTHANDS:
            return CharSet(shorthands=(c,))
        if c in CONTROL_ESCAPES:
            return CharSet(frozenset(CONTROL_ESCAPES[c]))
        if c.isalnum() or c == "_":
            supported = "\\d \\w \\s \\D \\W \\S \\n \\t and \\ before punctuation"
            raise self.fail(f"escape \\{c} is not supported (supported: {supported}).")
        return CharSet(frozenset(c))

    def char_class(self) -> CharSet:
        negated = self.peek() == "^"
        if negated:
            self.take()
        chars, ranges, shorthands = set(), [], []
        while self.peek() != "]":
            if self.peek() is None:
                raise self.fail("a character class is not closed: add ']'.")
            first = self.class_member()
            if isinstance(first, CharSet):  # a shorthand such as \d inside [...]
                shorthands += first.shorthands
                chars |= first.chars
                continue
            if self.peek() == "-" and self.i + 1 < len(self.pattern) and self.pattern[self.i + 1] != "]":
                self.take()
                last = self.class_member()
                if isinstance(last, CharSet) or last < first:
                    raise self.fail(f"bad range {first}-{last}: a range goes from a character to a later one, a-z.")
                ranges.append((first, last))
            else:
                chars.add(first)
        self.take()
        if not (chars or ranges or shorthands):
            raise self.fail("an empty character class [] matches nothing; list at least one character.")
        return CharSet(frozenset(chars), tuple(ranges), tuple(shorthands), negated)

    def class_member(self) -> str | CharSet:
        c = self.take()
        if c != "\\":
            return c
        escaped = self.escape()
        if escaped.shorthands:
            return escaped
        return next(iter(escaped.chars))


def parse(pattern: str):
    """The pattern's tree (Chars, Concat, Alt, Repeat; an empty Concat matches the empty string)."""
    if not isinstance(pattern, str):
        raise ValueError(f"a pattern must be a string, got {type(pattern).__name__}.")
    parser = _Parser(pattern)
    tree = parser.alternation()
    if parser.peek() is not None:  # only a stray ")" stops the top level early
        raise parser.fail("')' closes no group: remove it or escape it as \\).")
    return tree


# ----- 2. Thompson's NFA -------------------------------------------------------------------------


@dataclass
class NFA:
    """States 0..n-1; ``moves[s]``: (CharSet, target) pairs; ``empty[s]``: targets reached without a character."""

    moves: list[list[tuple[CharSet, int]]] = field(default_factory=list)
    empty: list[list[int]] = field(default_factory=list)
    start: int = 0
    accept: int = 0

    def new_state(self) -> int:
        self.moves.append([])
        self.empty.append([])
        return len(self.moves) - 1

    def closure(self, states) -> frozenset[int]:
        """Every state reachable from ``states`` (any iterable, a generator too) by empty moves alone."""
        todo = list(states)
        seen = set(todo)
        while todo:
            for target in self.empty[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return frozenset(seen)


def nfa_from_tree(tree) -> NFA:
    nfa = NFA()
    nfa.start, nfa.accept = thompson_fragment(nfa, tree)
    return nfa


def thompson_fragment(nfa: NFA, node) -> tuple[int, int]:
    """Add ``node``'s states; return its (entry, exit). Each construct is the textbook picture."""
    if isinstance(node, Chars):
        entry, exit_ = nfa.new_state(), nfa.new_state()
        nfa.moves[entry].append((node.charset, exit_))
        return entry, exit_
    if isinstance(node, Concat):
        entry = exit_ = nfa.new_state()
        for part in node.parts:  # chain the parts: each one's exit leads to the next one's entry
            part_entry, part_exit = thompson_fragment(nfa, part)
            nfa.empty[exit_].append(part_entry)
            exit_ = part_exit
        return entry, exit_
    if isinstance(node, Alt):
        entry, exit_ = nfa.new_state(), nfa.new_state()
        for option in node.options:
            option_entry, option_exit = thompson_fragment(nfa, option)
            nfa.empty[entry].append(option_entry)
            nfa.empty[option_exit].append(exit_)
        return entry, exit_
    inner_entry, inner_exit = thompson_fragment(nfa, node.node)  # a Repeat
    entry, exit_ = nfa.new_state(), nfa.new_state()
    nfa.empty[entry].append(inner_entry)
    nfa.empty[inner_exit].append(exit_)
    if node.quantifier in "?*":
        nfa.empty[entry].append(exit_)  # zero times
    if node.quantifier in "*+":
        nfa.empty[inner_exit].append(inner_entry)  # once more
    return entry, exit_


# ----- 3. the character DFA ----------------------------------------------------------------------


@dataclass
class DFA:
    """``transitions[s]``: character -> next state; a character that is missing kills the match. State 0 is the
    start. Every state can still reach an accepting one (dead states are removed)."""

    transitions: list[dict[str, int]]
    accepting: frozenset[int]
    alphabet: frozenset[str]

    def walk(self, state: int | None, text: str) -> int | None:
        """The state after reading ``text`` from ``state``, or None once the match has died."""
        for c in text:
            if state is None:
                return None
            state = self.transitions[state].get(c)
        return state

    def matches(self, text: str) -> bool:
        return self.walk(0, text) in self.accepting


def dfa_from_nfa(nfa: NFA, alphabet) -> DFA:
    """Subset construction: a DFA state is the set of NFA states the input could have led to."""
    alphabet = frozenset(alphabet)
    start = nfa.closure([nfa.start])
    index, sets, transitions = {start: 0}, [start], [{}]
    for state_set in sets:  # grows while we walk it: each new set is visited once
        here = index[state_set]
        for c in sorted(alphabet):
            targets = [t for s in state_set for charset, t in nfa.moves[s] if c in charset]
            if not targets:
                continue
            target_set = nfa.closure(targets)
            if target_set not in index:
                index[target_set] = len(sets)
                sets.append(target_set)
                transitions.append({})
            transitions[here][c] = index[target_set]
    accepting = {index[s] for s in sets if nfa.accept in s}
    return _without_dead_states(transitions, accepting, alphabet)


def _without_dead_states(transitions: list[dict[str, int]], accepting: set[int], alphabet) -> DFA:
    alive = _can_reach(accepting, [set(t.values()) for t in transitions])
    if 0 not in alive:
        return DFA([{}], frozenset(), alphabet)  # matches nothing over this alphabet
    keep = sorted(alive)  # state 0 stays first
    renumber = {old: new for new, old in enumerate(keep)}
    kept = [{c: renumber[t] for c, t in transitions[old].items() if t in alive} for old in keep]
    return DFA(kept, frozenset(renumber[s] for s in accepting), alphabet)


def _can_reach(goal: set[int], successors: list[set[int]]) -> set[int]:
    """States with a path to one in ``goal`` (a fixed point: add any state with a successor already in)."""
    reach, grew = set(goal), True
    while grew:
        grew = False
        for state, after in enumerate(successors):
            if state not in reach and after & reach:
                reach.add(state)
                grew = True
    return reach


def compile_regex(pattern: str, alphabet) -> DFA:
    """The character DFA of ``pattern`` over ``alphabet`` (an iterable of characters)."""
    return dfa_from_nfa(nfa_from_tree(parse(pattern)), alphabet)


# ----- 4. the token automaton --------------------------------------------------------------------


def token_texts(tokenizer) -> list[str | None]:
    """What each token id adds to the text a grammar sees: its vocabulary string; None for special tokens."""
    specials = set(tokenizer.all_special_ids)
    return [None if i in specials else tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]


class TokenAutomaton:
    """The DFA lifted to a tokenizer's vocabulary: ``next_state[s, t]`` (-1 where t kills the match) and
    ``allowed[s, t]``, True where t may come next. Decoding keeps one DFA state per sequence."""

    def __init__(self, pattern: str, texts: list[str | None], eos_token_id: int):
        if not 0 <= eos_token_id < len(texts):
            raise ValueError(f"eos_token_id {eos_token_id} is not in the vocabulary of {len(texts)} tokens.")
        self.pattern, self.texts, self.eos_token_id = pattern, texts, eos_token_id
        self.dfa = compile_regex(pattern, {c for text in texts if text for c in text})
        self.next_state = torch.tensor([[self.walk_token(s, t) for t in texts] for s in self.states])  # [S, V]
        self.live = self._token_live_states()
        self.allowed = self._allowed_table()  # [S, V]
        if not self.allowed[0].any():
            raise ValueError(
                f"no sequence of this vocabulary's tokens matches {pattern!r}. A grammar sees the tokens' strings "
                "joined without spaces (the cat sleeps . is 'thecatsleeps.'), so write the pattern in the "
                "vocabulary's words, e.g. 'the(cat|dog)s?(sleep|run)s?\\.'."
            )

    @property
    def states(self) -> range:
        return range(len(self.dfa.transitions))

    def walk_token(self, state: int, text: str | None) -> int:
        """One step of the token automaton: the DFA state after the token's characters, -1 once the match dies."""
        if text is None:
            return -1  # special tokens add no text; end-of-text is handled on its own
        after = self.dfa.walk(state, text)
        return -1 if after is None else after

    def _token_live_states(self) -> set[int]:
        """States from which some sequence of whole tokens reaches acceptance. The character DFA has no dead
        states, but a state can still be a dead end for tokens (the pattern wants 'x' and no token is 'x...')."""
        successors = [{int(t) for t in row if t >= 0} for row in self.next_state]
        return _can_reach(set(self.dfa.accepting), successors)

    def _allowed_table(self) -> torch.Tensor:
        live = torch.zeros(len(self.states) + 1, dtype=torch.bool)  # the extra last entry is state -1, dead
        live[sorted(self.live)] = True
        allowed = live[self.next_state]  # [S, V], -1 indexes the dead entry
        allowed[:, self.eos_token_id] = torch.tensor([s in self.dfa.accepting for s in self.states])
        return allowed

    def mask(self, logits: torch.Tensor, state: int) -> torch.Tensor:
        """``logits`` [V] with every token that cannot continue a match set to -inf."""
        return logits.masked_fill(~self.allowed[state], float("-inf"))

    def advance(self, state: int, token_id: int) -> int:
        if not self.allowed[state, token_id]:
            raise ValueError(f"token {token_id} ({self.texts[token_id]!r}) is not allowed in state {state}.")
        return int(self.next_state[state, token_id])

    def text_of(self, token_ids) -> str:
        """The text a grammar sees for these tokens (end-of-text and other special tokens add nothing)."""
        return "".join(self.texts[t] or "" for t in token_ids)

    def accepts(self, token_ids) -> bool:
        """Whether these tokens (optionally ending with end-of-text) spell a match, by the automaton."""
        return self.dfa.matches(self.text_of(token_ids))


def for_tokenizer(pattern: str, tokenizer) -> TokenAutomaton:
    """The token automaton of ``pattern`` over ``tokenizer``'s vocabulary (end-of-text: its eos token)."""
    return TokenAutomaton(pattern, token_texts(tokenizer), tokenizer.eos_token_id)


def choice_pattern(choices) -> str:
    """A pattern matching exactly one of ``choices`` (each taken literally), as vLLM's ``choice`` request does."""
    if isinstance(choices, str) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"choices must be a non-empty list of non-empty strings, got {choices!r}.")
    return "|".join("".join(c if c.isalnum() else "\\" + c for c in choice) for choice in choices)


# ----- decoding with the mask --------------------------------------------------------------------


@dataclass
class StructuredGeneration:
    tokens: list[int]  # new tokens, ending with end-of-text when the match completed
    stop_reason: str  # "eos" or "max_new_tokens"
    mask_seconds: float  # time spent applying the mask and advancing the automaton, all steps
    step_seconds: float  # time of the whole loop: forward passes, mask, choice


def generate_structured(
    model: Transformer,
    prompt_ids: list[int],
    automaton: TokenAutomaton,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int | None = None,
) -> StructuredGeneration:
    """Continue one prompt token by token, choosing only among the tokens the automaton allows (greedy at
    temperature 0, else sampled from the masked softmax). Stops after end-of-text or ``max_new_tokens``."""
    if not prompt_ids or not all(isinstance(t, int) for t in prompt_ids):
        raise ValueError(f"prompt_ids must be a non-empty list of token ids, got {prompt_ids!r:.80}.")
    if len(automaton.texts) != model.config.vocab_size:
        raise ValueError(
            f"the automaton covers {len(automaton.texts)} tokens but the model has vocab_size "
            f"{model.config.vocab_size}: build it with this model's tokenizer."
        )
    steps = tokens_that_fit(model.config.n_positions, [prompt_ids], max_new_tokens, "error")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with eval_mode(model), torch.inference_mode():
        return _masked_loop(model, prompt_ids, automaton, steps, temperature, generator)


def _masked_loop(model, prompt_ids, automaton, steps, temperature, generator) -> StructuredGeneration:
    cache, state, new, mask_seconds = KVCache(model.config.n_layer), 0, [], 0.0
    feed, position = torch.tensor([prompt_ids]), 0  # the first step feeds the whole prompt (prefill)
    started = time.perf_counter()
    for _ in range(steps):
        positions = torch.arange(position, position + feed.shape[1])[None]  # [1, T]
        logits = model(feed, cache=cache, position_ids=positions)[0, -1]  # [V]
        position += feed.shape[1]
        masked_at = time.perf_counter()
        logits = automaton.mask(logits, state)
        mask_seconds += time.perf_counter() - masked_at
        token = int(next_token(logits[None], temperature=temperature, generator=generator)[0])
        new.append(token)
        if token == automaton.eos_token_id:
            break
        masked_at = time.perf_counter()
        state = automaton.advance(state, token)
        mask_seconds += time.perf_counter() - masked_at
        feed = torch.tensor([[token]])
    stop = "eos" if new and new[-1] == automaton.eos_token_id else "max_new_tokens"
    return StructuredGeneration(new, stop, mask_seconds, time.perf_counter() - started)
