"""The engine: requests in, greedy tokens out, one scheduled step at a time.

    engine = Engine(model, num_blocks=33, block_size=32, max_num_seqs=16, max_num_batched_tokens=256)
    outputs = engine.generate(prompts, max_new_tokens=32)   # outputs[i].tokens: the new ids of prompts[i]
    engine.stats.preemptions, engine.stats.prefix_cache_hit_tokens, engine.stats.timeline
    Engine(..., record_steps=True).snapshots   # which blocks and queues, step by step (tinyformer.engine.recorder)

Each step: the scheduler picks the requests and token counts (and takes their blocks from the block
manager), the model runner runs them as one packed batch over the paged cache, and the scheduler
appends the sampled tokens and retires finished requests. The cache and the counters live as long as the
engine, so a later ``generate`` can hit blocks cached by an earlier one.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from itertools import count

from tinyformer.engine.block_manager import BlockManager
from tinyformer.engine.kv_cache import PagedKVCache
from tinyformer.engine.model_runner import ModelRunner
from tinyformer.engine.recorder import StepSnapshot, is_prefill, snapshot
from tinyformer.engine.scheduler import Scheduler
from tinyformer.engine.sequence import Sequence
from tinyformer.engine.stats import Stats, StepRecord
from tinyformer.model import Transformer, eval_mode
from tinyformer.vllm_rules import usable_blocks


@dataclass(frozen=True)
class Output:
    """What one request got back."""

    prompt: list[int]
    tokens: list[int]  # the new token ids (greedy)
    num_preemptions: int  # how often it gave its blocks back and was recomputed
    cached_prompt_tokens: int  # prompt tokens served from the prefix cache when it was first admitted


class Engine:
    def __init__(
        self,
        model: Transformer,
        *,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_prefix_caching: bool = True,
        poison_unowned_slots: bool = False,
        record_steps: bool = False,
    ):
        """``poison_unowned_slots`` (for tests): cache slots no request owns hold NaN, so attention that reads
        one (a mask off by one, a stale block table) fails loudly; see :class:`PagedKVCache`.
        ``record_steps``: keep a :class:`StepSnapshot` of the block tables and queues of every step in
        ``self.snapshots`` (for pictures; off by default, it copies every block table each step)."""
        if not isinstance(model, Transformer):
            raise ValueError(f"model must be a tinyformer Transformer, got {type(model).__name__}.")
        _check_positive(
            num_blocks=num_blocks,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
        )
        if usable_blocks(num_blocks) < 1:
            raise ValueError(
                f"num_blocks={num_blocks} leaves no block for requests: one block is held back (the null block, as "
                "in vLLM). Give at least num_blocks=2."
            )
        self.model = model
        self.block_size = block_size
        self.stats = Stats()
        dtype = model.lm_head.weight.dtype
        self.cache = PagedKVCache(
            model.config, num_blocks, block_size, dtype=dtype, device=model.device, poison=poison_unowned_slots
        )
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching, self.cache.poison_block)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens, self.stats)
        self.runner = ModelRunner(model, self.cache)
        self._ids = count()
        self.snapshots: list[StepSnapshot] | None = [] if record_steps else None

    @property
    def capacity_tokens(self) -> int:
        """Tokens the requests running at once can hold in total: the usable blocks times block_size."""
        return usable_blocks(len(self.block_manager.blocks)) * self.block_size

    def generate(self, prompts: Seq[Seq[int]], max_new_tokens: int | Seq[int]) -> list[Output]:
        """Greedy continuations of every prompt, all submitted at once and batched continuously."""
        prompts, limits = self._check_requests(prompts, max_new_tokens)
        seqs = [self.add_request(p, m, checked=True) for p, m in zip(prompts, limits, strict=True)]
        with eval_mode(self.model):
            while self.scheduler.has_unfinished():
                self.step()
        return [
            Output(s.token_ids[: s.num_prompt_tokens], s.output_ids, s.num_preemptions, s.cached_prompt_tokens)
            for s in seqs
        ]

    def add_request(self, prompt: Seq[int], max_new_tokens: int, *, checked: bool = False) -> Sequence:
        """Queue one request; it joins the running batch at a later step."""
        if not checked:
            self._check_requests([prompt], max_new_tokens)
        seq = Sequence.from_prompt(next(self._ids), list(prompt), max_new_tokens)
        self.stats.prompt_tokens += seq.num_prompt_tokens
        self.scheduler.add(seq)
        return seq

    def step(self) -> list[Sequence]:
        """Schedule, run the model once on the packed batch, append the new tokens. Returns finished requests."""
        scheduled = self.scheduler.schedule()
        self._record(scheduled)
        next_tokens = self.runner.run(scheduled) if scheduled else {}
        self.stats.generated_tokens += sum(map(len, next_tokens.values()))
        return self.scheduler.finish_step(scheduled, next_tokens)

    def _record(self, scheduled) -> None:
        running, preempted = self.scheduler.running, self.scheduler.preempted_this_step
        if self.snapshots is not None:
            self.snapshots.append(
                snapshot(
                    self.stats.steps,
                    running,
                    list(self.scheduler.waiting),
                    scheduled,
                    preempted,
                    self.scheduler.prefix_hits_this_step,
                    self.block_manager,
                )
            )
        self.stats.record(
            StepRecord(
                step=self.stats.steps,
                running=len(running),
                waiting=len(self.scheduler.waiting),
                blocks_used=self.block_manager.num_used_blocks,
                tokens_held=sum(s.num_computed_tokens for s in running) + sum(n for _, n in scheduled),
                scheduled_tokens=sum(n for _, n in scheduled),
                prefill_tokens=sum(n for s, n in scheduled if is_prefill(s, n)),
                preempted=len(preempted),
            )
        )

    def _check_requests(self, prompts, max_new_tokens) -> tuple[list[list[int]], list[int]]:
        """Refuse, before anything runs, what could never finish: the message says what to change."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Seq) or not prompts:
            raise ValueError("prompts must be a non-empty list of token-id lists, e.g. [[5, 6, 7], [8, 9]].")
        limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != len(prompts):
            raise ValueError(f"max_new_tokens has {len(limits)} entries for {len(prompts)} prompts; give one each.")
        config, checked = self.model.config, []
        for i, (prompt, limit) in enumerate(zip(prompts, limits, strict=True)):
            _check_positive(max_new_tokens=limit)
            if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Seq) or not prompt:
                raise ValueError(f"prompt {i} must be a non-empty list of token ids, got {prompt!r:.60}.")
            ids = [int(t) for t in prompt]
            if min(ids) < 0 or max(ids) >= config.vocab_size:
                raise ValueError(f"prompt {i} has a token id outside the vocabulary 0..{config.vocab_size - 1}.")
            total = len(ids) + limit
            if total > config.n_positions:
                raise ValueError(
                    f"prompt {i} ({len(ids)} tokens) + max_new_tokens ({limit}) = {total} tokens, more than the "
                    f"position table holds (n_positions={config.n_positions}). Shorten the prompt or ask for at "
                    f"most {config.n_positions - len(ids)} new tokens."
                )
            if total - 1 > self.capacity_tokens:  # the last token is sampled, never cached
                raise ValueError(
                    f"prompt {i} would grow to {total} tokens, but the whole cache holds {self.capacity_tokens} "
                    f"({usable_blocks(len(self.block_manager.blocks))} usable blocks of {self.block_size}): it could "
                    "never finish. Give the engine more blocks or ask for fewer new tokens."
                )
            checked.append(ids)
        return checked, limits


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
