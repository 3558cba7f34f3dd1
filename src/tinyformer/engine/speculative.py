"""Speculative decoding (lesson 16) on the learner's engine: a small draft model guesses k tokens, the target
model checks all k in ONE forward pass, and the longest prefix the target agrees with is kept, plus the target's
own next token. Greedy output is exactly the target's alone: every kept token is one the target chose.

    engine = SpeculativeEngine(target, draft, num_speculative_tokens=3, num_blocks=40, block_size=16,
                               max_num_seqs=16, max_num_batched_tokens=256)
    outputs = engine.generate(prompts, 32)          # the same tokens as Engine(target, ...).generate(prompts, 32)
    engine.spec.acceptance_rate, engine.spec.mean_accepted_length

One step, for a request whose tokens so far are ``... t`` (``t`` not yet cached):

1. **Propose** (``DraftProposer``): the draft continues the request greedily by k tokens d1..dk (or
   ``NgramProposer``: the tokens that followed the request's last few tokens where they occurred before).
2. **Verify**: the target runs ``t d1 .. dk`` as one chunk (k + 1 tokens, causal attention over the request's
   cache, its keys and values written into the request's blocks like any chunk) and gives its greedy token
   after each of them: g0 (after t), g1 (after d1), ... gk.
3. **Accept** (``accepted_tokens``): d1 is kept if d1 == g0, then d2 if d2 == g1, ...; at the first disagreement
   the target's own token is kept instead and the rest is thrown away. So a step gains between 1 (nothing
   accepted: g0, what plain decoding gets) and k + 1 tokens (all accepted, plus gk).
4. **Roll back** (``BlockManager.roll_back``): the keys and values of rejected draft tokens were written; the
   request keeps the slots of its accepted tokens only, and blocks holding nothing but rejected tokens go back
   to the pool.

The draft runs in its own lesson-13 ``Engine`` (its own paged cache, batched across requests; its prefix cache
keeps each request's earlier full blocks from round to round, so a round re-reads at most one partial block).
Counters are vLLM's (``vllm:spec_decode_num_drafts`` / ``_num_draft_tokens`` / ``_num_accepted_tokens`` /
``_num_accepted_tokens_per_pos``): counted on what was verified, before a request's max_new_tokens cuts the last
step short, as vLLM counts them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from tinyformer.data import Corpus
from tinyformer.engine.block_manager import blocks_needed
from tinyformer.engine.llm_engine import Engine
from tinyformer.engine.sequence import Sequence
from tinyformer.model import Transformer

MAX_SPECULATIVE_TOKENS = 16  # a guard against typos: past a handful, nearly every extra draft token is rejected


def corpus_prompts(tokenizer, n: int, seed: int = 0, shortest: int = 8, longest: int = 24) -> list[list[int]]:
    """n prompts of ``shortest``..``longest`` consecutive tokens of the shipped corpus (a seeded trace: the
    benchmark, lesson 16 and the vLLM comparison use the same one)."""
    text = [t for s in Corpus(seed=3).sentences(400) for t in tokenizer(" ".join(s))["input_ids"]]
    rng = random.Random(seed)
    starts = [(rng.randrange(len(text) - longest), rng.randint(shortest, longest)) for _ in range(n)]
    return [text[start : start + length] for start, length in starts]


def accepted_tokens(draft_ids: list[int], target_ids: list[int]) -> list[int]:
    """The acceptance rule (greedy). ``target_ids[i]`` is the target's greedy token after the request's tokens
    followed by ``draft_ids[:i]``, for i = 0 .. len(target_ids) - 1 (one more than the drafts it checked).

    Keep the draft tokens while the target chose the same one, then the target's own token: the result is always
    ``target_ids[: n + 1]`` with n the number of drafts accepted. Every token kept is the target's choice."""
    n = 0
    while n < len(target_ids) - 1 and draft_ids[n] == target_ids[n]:
        n += 1
    return target_ids[: n + 1]


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Tokens a request gains per target step when each draft token is accepted with probability ``alpha``
    (independently, given the ones before it were): 1 + alpha + alpha^2 + ... + alpha^k."""
    return sum(alpha**i for i in range(k + 1))


def predicted_time_per_token(k: int, alpha: float, draft_step: float, verify_step: float) -> float:
    """Seconds per generated token with speculation: a round costs k draft steps and one verify step and yields
    ``expected_tokens_per_step`` tokens. Plain decoding costs one target step per token: speculation pays when
    this is below the plain step's time."""
    return (k * draft_step + verify_step) / expected_tokens_per_step(alpha, k)


@dataclass
class SpecStats:
    """vLLM's speculative-decoding counters, and where the time went."""

    num_speculative_tokens: int
    num_drafts: int = 0  # vllm:spec_decode_num_drafts: (request, step) pairs that verified draft tokens
    num_draft_tokens: int = 0  # vllm:spec_decode_num_draft_tokens: draft tokens verified
    num_accepted_tokens: int = 0  # vllm:spec_decode_num_accepted_tokens: of which accepted
    accepted_per_pos: list[int] = field(default_factory=list)  # vllm:spec_decode_num_accepted_tokens_per_pos
    target_steps: int = 0  # forward passes of the target (prefills and verifies)
    draft_seconds: float = 0.0  # time in the draft model (all its steps)
    target_seconds: float = 0.0  # time in the target's steps (scheduling, one forward pass, accepting)

    def __post_init__(self) -> None:
        self.accepted_per_pos = self.accepted_per_pos or [0] * self.num_speculative_tokens

    def count(self, num_checked: int, num_accepted: int) -> None:
        if num_checked == 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += num_checked
        self.num_accepted_tokens += num_accepted
        for pos in range(num_accepted):
            self.accepted_per_pos[pos] += 1

    def as_vllm_counters(self) -> dict:
        """The counters as ``tinyformer.serving.metrics.spec_decode_counters`` reads vLLM's from /metrics."""
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "accepted_per_pos": list(self.accepted_per_pos),
        }

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / verified draft tokens (vLLM's "Draft acceptance rate")."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a request gains per verify step: 1 + accepted drafts per draft (vLLM's "Mean acceptance
        length")."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0


class DraftProposer:
    """The draft model behind its own engine: k greedy tokens for each request, all requests batched."""

    def __init__(self, draft: Transformer, *, block_size: int, max_num_seqs: int, max_num_batched_tokens: int):
        # Room for every request at full length, so the draft never preempts (it only guesses; its pool is its own).
        per_request = blocks_needed(draft.config.n_positions, block_size)
        self.engine = Engine(
            draft,
            num_blocks=max_num_seqs * per_request + 1,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max(max_num_batched_tokens, draft.config.n_positions),
        )

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        """The draft's greedy continuation of each request's tokens, ``num_tokens[i]`` tokens for ``seqs[i]``."""
        outputs = self.engine.generate([seq.token_ids for seq in seqs], num_tokens)
        return [out.tokens for out in outputs]


class NgramProposer:
    """Drafts without a model (vLLM's ``"method": "ngram"``, prompt lookup): find the longest n-gram
    (``min_n`` <= n <= ``max_n``) that ends the request and also occurs earlier in it, and propose the tokens that
    followed its earliest occurrence. Free to run; good on text that repeats itself."""

    def __init__(self, min_n: int = 1, max_n: int = 4):
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (min_n, max_n)) or not 1 <= min_n <= max_n:
            raise ValueError(f"need whole numbers 1 <= min_n <= max_n, got min_n={min_n!r}, max_n={max_n!r}.")
        self.min_n, self.max_n = min_n, max_n

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        return [self.lookup(seq.token_ids, k) for seq, k in zip(seqs, num_tokens, strict=True)]

    def lookup(self, tokens: list[int], k: int) -> list[int]:
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):  # the longest n-gram first
            suffix = tokens[-n:]
            for start in range(len(tokens) - n):  # its earliest earlier occurrence
                if tokens[start : start + n] == suffix:
                    return tokens[start + n : start + n + k]
        return []


class SpeculativeEngine(Engine):
    """The lesson-13 engine (``Engine``: same scheduler, preemption, prefix caching) with a draft model proposing
    ``num_speculative_tokens`` tokens per request per step."""

    def __init__(
        self, model: Transformer, draft: Transformer | NgramProposer, *, num_speculative_tokens: int, **engine_options
    ):
        _check_draft(model, draft, num_speculative_tokens)
        super().__init__(model, **engine_options)
        self.k = num_speculative_tokens
        if isinstance(draft, NgramProposer):
            self.drafter = draft
        else:
            self.drafter = DraftProposer(
                draft,
                block_size=self.block_size,
                max_num_seqs=self.scheduler.max_num_seqs,
                max_num_batched_tokens=self.scheduler.max_num_batched_tokens,
            )
        self.spec = SpecStats(num_speculative_tokens)

    def step(self) -> list[Sequence]:
        """Propose, then one target step that verifies every request's drafts, accept, roll back."""
        started = time.perf_counter()
        self.propose_drafts()
        verify_started = time.perf_counter()
        scheduled = self.scheduler.schedule()  # a decoding request runs 1 + len(draft_ids) tokens
        self._record(scheduled)
        greedy = self.runner.run(scheduled) if scheduled else {}  # the ONE forward pass of the target
        gained = {}
        for seq, _ in scheduled:
            if seq.seq_id in greedy:
                gained[seq.seq_id] = self.check_drafts(seq, greedy[seq.seq_id])
                self.stats.generated_tokens += min(len(gained[seq.seq_id]), seq.max_new_tokens - len(seq.output_ids))
        finished = self.scheduler.finish_step(scheduled, gained)  # appends, rolls rejected slots back
        self.spec.target_steps += bool(scheduled)
        self.spec.draft_seconds += verify_started - started
        self.spec.target_seconds += time.perf_counter() - verify_started
        return finished

    def propose_drafts(self) -> None:
        """Draft tokens for every running request that is decoding (its tokens all cached but the last); none
        past the position table (like vLLM's max_model_len) and none for a prompt still being prefilled."""
        seqs, counts = [], []
        for seq in self.scheduler.running:
            room = self.model.config.n_positions - seq.num_tokens
            if seq.num_computed_tokens == seq.num_tokens - 1 and room > 0:
                seqs.append(seq)
                counts.append(min(self.k, room))
        if seqs:
            for seq, drafts in zip(seqs, self.drafter.propose(seqs, counts), strict=True):
                seq.draft_ids = drafts

    def check_drafts(self, seq: Sequence, target_ids: list[int]) -> list[int]:
        """The tokens the request keeps this step, counted as vLLM counts them. A step's token budget may have
        cut a request's chunk short: then only the drafts the target saw are checked."""
        checked = seq.draft_ids[: len(target_ids) - 1]
        kept = accepted_tokens(checked, target_ids)
        self.spec.count(len(checked), len(kept) - 1)
        return kept


def _check_draft(model: Transformer, draft: Transformer, k: int) -> None:
    """Refuse, before any work, a draft that cannot speak for the target (vLLM refuses the same)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
        raise ValueError(
            f"num_speculative_tokens must be a whole number from 1 to {MAX_SPECULATIVE_TOKENS}, got {k!r}."
        )
    if isinstance(draft, NgramProposer):
        return
    if not isinstance(draft, Transformer):
        raise ValueError(f"draft must be a tinyformer Transformer or an NgramProposer, got {type(draft).__name__}.")
    if draft.config.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"the draft's vocabulary has {draft.config.vocab_size} tokens, the target's {model.config.vocab_size}: "
            "a draft must use the target's tokenizer, or its token ids mean other words."
        )
    if draft.config.n_positions < model.config.n_positions:
        raise ValueError(
            f"the draft has n_positions={draft.config.n_positions}, fewer than the target's "
            f"{model.config.n_positions}: it could not propose for long requests. Build it with at least as many."
        )
